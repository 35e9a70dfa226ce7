// STUB of com.microsoft.onnxruntime:onnxruntime-android (signatures only; see tests/stubs/README.md).
package ai.onnxruntime;

import java.nio.FloatBuffer;
import java.nio.LongBuffer;

public class OnnxTensor extends OnnxTensorLike {
  public static OnnxTensor createTensor(OrtEnvironment env, LongBuffer data, long[] shape) throws OrtException {
    throw new UnsupportedOperationException("stub");
  }

  public static OnnxTensor createTensor(OrtEnvironment env, FloatBuffer data, long[] shape) throws OrtException {
    throw new UnsupportedOperationException("stub");
  }

  public FloatBuffer getFloatBuffer() { throw new UnsupportedOperationException("stub"); }

  @Override
  public Object getValue() throws OrtException { throw new UnsupportedOperationException("stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("stub"); }
}
