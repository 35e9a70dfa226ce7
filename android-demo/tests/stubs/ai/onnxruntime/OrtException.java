// STUB of com.microsoft.onnxruntime:onnxruntime-android (signatures only; see tests/stubs/README.md).
package ai.onnxruntime;

public class OrtException extends Exception {
  public OrtException(String message) { super(message); }
}
