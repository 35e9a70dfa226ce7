// STUB of com.microsoft.onnxruntime:onnxruntime-android (signatures only; see tests/stubs/README.md).
package ai.onnxruntime;

import java.util.Iterator;
import java.util.Map;
import java.util.Optional;
import java.util.Set;

public class OrtSession implements AutoCloseable {
  public Set<String> getInputNames() { throw new UnsupportedOperationException("stub"); }

  public Result run(Map<String, ? extends OnnxTensorLike> inputs) throws OrtException {
    throw new UnsupportedOperationException("stub");
  }

  @Override
  public void close() throws OrtException { throw new UnsupportedOperationException("stub"); }

  public static class SessionOptions implements AutoCloseable {
    public SessionOptions() { throw new UnsupportedOperationException("stub"); }

    public void setIntraOpNumThreads(int numThreads) throws OrtException { throw new UnsupportedOperationException("stub"); }

    @Override
    public void close() { throw new UnsupportedOperationException("stub"); }
  }

  public static class Result implements AutoCloseable, Iterable<Map.Entry<String, OnnxValue>> {
    public Optional<OnnxValue> get(String key) { throw new UnsupportedOperationException("stub"); }

    @Override
    public Iterator<Map.Entry<String, OnnxValue>> iterator() { throw new UnsupportedOperationException("stub"); }

    @Override
    public void close() { throw new UnsupportedOperationException("stub"); }
  }
}
