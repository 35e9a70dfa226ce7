// STUB of org.pytorch:executorch-android 1.5.1 (signatures only; see tests/stubs/README.md).
package org.pytorch.executorch.extension.llm;

public class LlmModule {
  public LlmModule(String modulePath, String tokenizerPath, float temperature) {
    throw new UnsupportedOperationException("stub");
  }

  public int load() { throw new UnsupportedOperationException("stub"); }

  public int generate(String prompt, int seqLen, LlmCallback llmCallback, boolean echo) {
    throw new UnsupportedOperationException("stub");
  }

  public void stop() { throw new UnsupportedOperationException("stub"); }

  public void resetContext() { throw new UnsupportedOperationException("stub"); }

  public void resetNative() { throw new UnsupportedOperationException("stub"); }
}
