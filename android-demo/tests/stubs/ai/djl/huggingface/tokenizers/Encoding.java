// STUB of ai.djl.huggingface:tokenizers 0.33.0 (signatures only; see tests/stubs/README.md).
package ai.djl.huggingface.tokenizers;

public class Encoding {
  public long[] getIds() { throw new UnsupportedOperationException("stub"); }
}
