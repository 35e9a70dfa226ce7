// STUB of com.microsoft.onnxruntime:onnxruntime-android (signatures only; see tests/stubs/README.md).
package ai.onnxruntime;

public interface OnnxValue extends AutoCloseable {
  Object getValue() throws OrtException;

  @Override
  void close();
}
