"""``edgeseg serve`` as a real process on a free port, called with the stock clients (tritonclient, plain HTTP).

One server (two tiny models, a token, a 50 ms batching window) serves every test of this module but the
SIGTERM one, which stops its own. The reference for every mask is the runtime's :class:`Model` in this
process, on the same engine (onnxruntime), so masks are compared for equality.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from edgeseg.runtime import BadInputError, Client, EdgesegError, Model, preprocess, read_mask_png

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _auth() -> dict[str, str]:
    # tritonclient adds its own headers to the dict it is given (Inference-Header-Content-Length): a fresh one each
    # call. Lower case: gRPC metadata keys must be (HTTP headers do not care).
    return {key.lower(): value for key, value in AUTH.items()}


@pytest.fixture(scope="module")
def server(serve_process, serve_models):
    return serve_process([f"tiny={serve_models['tiny']}", f"other={serve_models['other']}", "--engine", "onnxruntime",
                          "--token", TOKEN, "--max-batch", "8", "--max-delay-ms", "50", "--max-body-mb", "1",
                          "--max-pixels", "1000000", "--grpc-port", "0"])


@pytest.fixture(scope="module")
def reference(serve_models):
    return Model(serve_models["tiny"], engine="onnxruntime")


def _image(seed: int, height: int = 40, width: int = 56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(height, width) // 3, (40, 200, 90), -1)
    return image


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _post(server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = server.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=body, headers={**AUTH, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = server.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path, headers=headers if headers is not None else AUTH)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _mask_of_png(data: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / f"mask-{time.monotonic_ns()}.png"
    path.write_bytes(data)
    return read_mask_png(path)


def test_the_stock_tritonclient_reads_metadata_and_infers_with_json_and_binary_tensors(server, reference):
    client = triton.InferenceServerClient(server.address)
    assert client.is_server_live() and client.is_server_ready()  # health needs no token
    assert client.is_model_ready("tiny", headers=_auth())
    metadata = client.get_model_metadata("tiny", headers=_auth())
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 32, 32, 2]},
                                   {"name": "class_ids", "datatype": "UINT8", "shape": [-1, 32, 32]}]
    contract = metadata["edgeseg"]["contract"]  # the preprocessing a client must apply, from the file
    assert contract["input"]["scale"] == pytest.approx(1 / 255) and contract["input"]["color"] == "RGB"
    assert contract["output"]["classes"] == ["background", "thing"]
    assert client.get_model_config("tiny", headers=_auth())["max_batch_size"] == 8

    batch = np.concatenate([preprocess(_image(seed), reference.contract.input)[0] for seed in (1, 2, 3)])
    expected = reference.run(batch)
    for binary in (False, True):
        tensor = triton.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("scores", "class_ids")]
        result = client.infer("tiny", [tensor], outputs=outputs, headers=_auth())
        np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=0, atol=1e-6)
        assert np.array_equal(result.as_numpy("class_ids"), expected.argmax(-1).astype(np.uint8))
        described = result.get_response()["outputs"][0]
        assert ("parameters" in described) == binary and ("data" in described) == (not binary)


def test_the_stock_tritonclient_grpc_client_reads_metadata_and_infers(server, reference):
    grpc_address = next(line.split(" gRPC on ")[1].strip() for line in server.lines if " gRPC on " in line)
    client = triton_grpc.InferenceServerClient(grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_model_metadata("tiny", headers=_auth(), as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("image", "FP32",
                                                                                    ["-1", "32", "32", "3"])]
    config = client.get_model_config("tiny", headers=_auth(), as_json=True)["config"]
    assert json.loads(config["parameters"]["edgeseg_contract"]["string_value"])["output"]["classes"] == [
        "background", "thing"]
    batch = np.concatenate([preprocess(_image(seed), reference.contract.input)[0] for seed in (4, 5)])
    tensor = triton_grpc.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("tiny", [tensor], headers=_auth())
    expected = reference.run(batch)
    np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=0, atol=1e-6)
    assert np.array_equal(result.as_numpy("class_ids"), expected.argmax(-1).astype(np.uint8))
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED.*no authorization metadata"):
        client.infer("tiny", [tensor])
    wrong = triton_grpc.InferInput("image", [1, 8, 8, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InferenceServerException, match=r"INVALID_ARGUMENT.*expected \[N, 32, 32, 3\]"):
        client.infer("tiny", [wrong], headers=_auth())


def test_segment_takes_raw_and_multipart_images_and_answers_json_or_a_palette_png(server, reference, serve_models,
                                                                                  tmp_path):
    image = _image(7, 45, 61)
    expected = reference(image)
    status, headers, body = _post(server, "/v1/models/tiny/segment", _png(image), {"Content-Type": "image/png"})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert (answer["width"], answer["height"]) == (61, 45)
    assert answer["class_fraction"] == pytest.approx(dict(expected.class_fraction), abs=1e-6)

    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    boundary = "edgesegtestboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()
    status, _, body = _post(server, "/v1/models/tiny/segment?include=classes", form,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and json.loads(body)["classes"] == ["background", "thing"]
    assert json.loads(body)["class_fraction"] == pytest.approx(dict(reference(decoded).class_fraction), abs=1e-6)

    status, headers, body = _post(server, "/v1/models/tiny/segment", _png(image), {"Accept": "image/png"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert np.array_equal(_mask_of_png(body, tmp_path), expected.mask)

    # The second model of the process answers with its own weights and classes.
    other = Model(serve_models["other"], engine="onnxruntime")(image)
    status, _, body = _post(server, "/v1/models/other/segment", _png(image))
    assert status == 200 and json.loads(body)["class_fraction"] == pytest.approx(dict(other.class_fraction), abs=1e-6)
    assert set(json.loads(body)["class_fraction"]) == {"sky", "ground"}


# pycocotools 2.0.x calls np.array(copy=False) on NumPy 2 (its own warning, not ours)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_the_vector_views_give_the_mask_as_rle_polygons_and_components(server, reference):
    from pycocotools import mask as coco_mask  # the dev extra

    from edgeseg.runtime.vectors import Polygon, rasterize_polygons

    image = _image(11, 48, 64)
    truth = reference(image).mask == 1  # class "thing"; "background" has no vector form
    status, _, body = _post(server, "/v1/models/tiny/segment?include=rle,polygons,components", _png(image))
    answer = json.loads(body)
    assert status == 200 and set(answer["rle"]) == set(answer["polygons"]) == set(answer["components"]) == {"thing"}
    rle = answer["rle"]["thing"]["rle"]
    assert np.array_equal(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool), truth)
    back = rasterize_polygons([Polygon.from_record(p) for p in answer["polygons"]["thing"]["polygons"]], truth.shape)
    assert (back & truth).sum() / (back | truth).sum() >= 0.99  # tolerance 0.5 px (README, vectors.py)
    assert answer["components"]["thing"]["area"] == truth.sum() == sum(c["area"] for c in
                                                                       answer["components"]["thing"]["components"])


def test_the_runtime_client_gives_the_results_of_model(server, reference):
    client = Client(server.url, "tiny", token=TOKEN)
    for seed in (11, 12):
        image = _image(seed, 33, 47)
        got, expected = client(image), reference(image)
        assert np.array_equal(got.mask, expected.mask) and got.class_fraction == expected.class_fraction
    with pytest.raises(BadInputError, match="refused the image: image too large"):
        client(np.zeros((1001, 1000, 3), np.uint8))  # --max-pixels 1000000
    with pytest.raises(EdgesegError, match="HTTP 401"):
        Client(server.url, "tiny")
    with pytest.raises(EdgesegError, match="unknown model 'nope'"):
        Client(server.url, "nope", token=TOKEN)


def test_32_concurrent_clients_get_the_masks_of_model_and_share_inference_calls(server, reference, tmp_path):
    images = [_image(100 + i, 30 + i, 50 - i) for i in range(32)]
    answers: list[tuple[int, dict[str, str], bytes] | None] = [None] * 32
    start = threading.Barrier(32)

    def call(i: int) -> None:
        start.wait()
        answers[i] = _post(server, "/v1/models/tiny/segment", _png(images[i]), {"Accept": "image/png"})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(a is not None and a[0] == 200 for a in answers), [a and a[0] for a in answers]
    for image, (_, _, body) in zip(images, answers):
        assert np.array_equal(_mask_of_png(body, tmp_path), reference(image).mask)
    batches = [int(headers["x-edgeseg-batch"]) for _, headers, _ in answers]
    assert max(batches) > 1 and max(batches) <= 8
    status, text = _get(server, "/metrics")
    metrics = text.decode()
    # The histogram of batch sizes: fewer inference calls than requests, counted per model.
    calls = float(_metric(metrics, 'edgeseg_serve_batch_size_count{model="tiny"}'))
    items = float(_metric(metrics, 'edgeseg_serve_batch_size_sum{model="tiny"}'))
    assert status == 200 and calls < items
    assert float(_metric(metrics, 'edgeseg_serve_requests_total{code="200",endpoint="segment",model="tiny"}')) >= 32
    assert 'edgeseg_serve_queue_depth{model="other"}' in metrics


def _metric(text: str, series: str) -> str:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return line.split()[-1]
    raise AssertionError(f"{series} not in /metrics:\n{text[:2000]}")


def _bomb_png(width: int, height: int) -> bytes:
    # A valid PNG header announcing width x height pixels, with a few bytes of data: decoding it would allocate.
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_malformed_requests_each_get_one_clear_4xx_line_and_the_server_keeps_serving(server, reference):
    good = _png(_image(5))
    infer = "/v2/models/tiny/infer"
    tensor = {"name": "image", "datatype": "FP32", "shape": [1, 32, 32, 3], "data": [0.5] * (32 * 32 * 3)}
    cases = {
        "bad json": (infer, b'{"inputs": [', {}, 400, "not valid JSON"),
        "wrong shape": (infer, json.dumps({"inputs": [{**tensor, "shape": [1, 16, 16, 3],
                                                       "data": [0.5] * 768}]}).encode(), {}, 400, "[N, 32, 32, 3]"),
        "wrong dtype": (infer, json.dumps({"inputs": [{**tensor, "datatype": "INT32",
                                                       "data": [1] * 3072}]}).encode(), {}, 400, "expected FP32"),
        "data size": (infer, json.dumps({"inputs": [{**tensor, "data": [0.5] * 10}]}).encode(), {}, 400, "needs 3072"),
        "wrong input": (infer, json.dumps({"inputs": [{**tensor, "name": "x"}]}).encode(), {}, 400, "'image'"),
        "huge body": ("/v1/models/tiny/segment", b"\0" * (1024 * 1024 + 1), {}, 413, "--max-body-mb 1"),
        "pixel bomb": ("/v1/models/tiny/segment", _bomb_png(60000, 60000), {}, 400, "60000x60000 > 1000000"),
        "not an image": ("/v1/models/tiny/segment", b"GIF? no: plain text", {}, 400, "send JPEG or PNG"),
        "truncated jpeg": ("/v1/models/tiny/segment", cv2.imencode(".jpg", _image(6))[1].tobytes()[:400], {}, 400,
                           "truncated JPEG"),
        "unknown model": ("/v2/models/nope/infer", b"{}", {}, 404, "unknown model 'nope'"),
        "a path for a name": ("/v1/models/..%2F..%2Fetc%2Fpasswd/segment", good, {}, 404, "no endpoint"),
        "dots for a name": ("/v1/models/%2e%2e/segment", good, {}, 404, "unknown model '..'"),
        "unknown view": ("/v1/models/tiny/segment?include=zones", good, {}, 400, "known: class_fraction"),
        "missing token": ("/v1/models/tiny/segment", good, {"Authorization": ""}, 401, "no Authorization header"),
        "wrong token": ("/v1/models/tiny/segment", good, {"Authorization": "Bearer nope"}, 401, "wrong bearer token"),
    }
    for case, (path, body, headers, status, words) in cases.items():
        got, _, answer = _post(server, path, body, headers)
        assert got == status, (case, got, answer)
        error = json.loads(answer)["error"]
        assert words in error and "\n" not in error, (case, error)
        assert _post(server, "/v1/models/tiny/segment", good)[0] == 200, f"the server stopped serving after {case}"
    assert _get(server, "/metrics", headers={})[0] == 401  # metrics too sit behind the token
    assert _get(server, "/v2/health/ready", headers={})[0] == 200
    client = triton.InferenceServerClient(server.address)
    with pytest.raises(InferenceServerException, match="has no output 'nope'"):
        tensor = triton.InferInput("image", [1, 32, 32, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.float32))
        client.infer("tiny", [tensor], outputs=[triton.InferRequestedOutput("nope")], headers=_auth())


def test_sigterm_drains_the_request_in_flight_refuses_past_the_queue_bound_and_exits_within_2_s(
        serve_process, serve_models, reference):
    server = serve_process([str(serve_models["tiny"]), "--engine", "onnxruntime", "--max-queue", "1"])
    host, port = server.address.rsplit(":", 1)
    image = _png(_image(9))
    # A request whose body is still arriving is admitted and in flight: it holds the model's one queue place.
    slow = socket.create_connection((host, int(port)), timeout=30)
    slow.sendall(f"POST /v1/models/tiny/segment HTTP/1.1\r\nHost: x\r\nContent-Length: {len(image)}\r\n"
                 f"Content-Type: image/png\r\n\r\n".encode() + image[:10])
    for _ in range(200):  # until the server has admitted it (in_flight shows 1)
        if 'edgeseg_serve_requests_in_flight{model="tiny"} 1.0' in _get(server, "/metrics")[1].decode():
            break
        time.sleep(0.02)
    status, headers, body = _post(server, "/v1/models/tiny/segment", image)
    assert status == 503 and headers["retry-after"] == "1" and "--max-queue" in json.loads(body)["error"]

    started = time.monotonic()
    server.proc.send_signal(15)
    time.sleep(0.3)  # the server has stopped accepting; the slow request is still in flight
    slow.sendall(image[10:])
    answer = slow.makefile("rb").read()
    slow.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    document = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert document["class_fraction"] == pytest.approx(dict(reference(cv2.imdecode(np.frombuffer(image, np.uint8),
                                                                                    1)).class_fraction), abs=1e-6)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 2.0, "".join(server.lines[-5:])
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
