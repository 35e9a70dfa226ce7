// STUB of org.pytorch:executorch-android 1.5.1 (signatures only; see tests/stubs/README.md).
package org.pytorch.executorch.extension.llm;

public interface LlmCallback {
  void onResult(String result);

  default void onStats(String stats) {}
}
