// STUB of ai.djl.huggingface:tokenizers 0.33.0 (signatures only; see tests/stubs/README.md).
package ai.djl.huggingface.tokenizers;

import java.io.IOException;
import java.nio.file.Path;

public final class HuggingFaceTokenizer implements AutoCloseable {
  public static HuggingFaceTokenizer newInstance(Path modelPath) throws IOException {
    throw new UnsupportedOperationException("stub");
  }

  public Encoding encode(String text, boolean addSpecialTokens, boolean withOverflowingTokens) {
    throw new UnsupportedOperationException("stub");
  }

  public String decode(long[] ids, boolean skipSpecialTokens) { throw new UnsupportedOperationException("stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("stub"); }
}
