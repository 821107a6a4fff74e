# edgeseg serve on a CPU: the runtime (OpenCV + onnxruntime) and the serve extra, no TensorFlow, no Ray.
#   docker build -t edgeseg-serve .
#   docker run --rm -p 8000:8000 edgeseg-serve                                  # serves the sample FCN-8 as "fcn8"
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" edgeseg-serve /models/my.onnx --token-file /models/token
# tests/edgeseg/serve/test_dockerfile.py runs these steps in a fresh venv (COPY, the venv, the pip install, the
# command), so a missing dependency of the runtime-only install fails the test suite, not the image build.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeseg edgeseg
COPY runtime runtime
COPY export export
COPY calibration calibration
# The venv gets no pip of its own: the base image's pip installs into it (--python), and the image ships
# only what runs. onnxruntime is the cpu extra without imageio-ffmpeg (a video encoder a server never uses).
RUN python -m venv --without-pip /opt/edgeseg
RUN pip --python /opt/edgeseg/bin/python install --no-cache-dir 'onnxruntime>=1.20,<2' '.[serve]'

FROM python:3.11-slim
COPY --from=build /opt/edgeseg /opt/edgeseg
COPY samples/models/fcn8/model.onnx /models/fcn8/model.onnx
RUN useradd --system --uid 10001 --no-create-home edgeseg
USER edgeseg
ENV PATH=/opt/edgeseg/bin:$PATH PYTHONDONTWRITEBYTECODE=1
EXPOSE 8000
# 0.0.0.0 inside the container: the published port (-p) decides who reaches it. Add --token-file for auth.
ENTRYPOINT ["edgeseg", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/models/fcn8/model.onnx"]
