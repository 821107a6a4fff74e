"""``edgeseg serve --ray local --replicas 2``: the same app as Ray Serve replicas on a real, new local Ray.

``--ray local`` starts a Ray of its own (``ray.init(address="local")``) whatever else runs on the machine,
and shuts it down on SIGTERM. One test: Ray Serve takes ~10 s to start on 2 busy cores.
"""

from __future__ import annotations

import concurrent.futures
import json
import http.client

import cv2
import numpy as np
import tritonclient.http as triton

from edgeseg.runtime import Model, preprocess


def test_ray_serve_replicas_answer_the_same_endpoints_with_the_same_results(serve_process, serve_models):
    server = serve_process([f"tiny={serve_models['tiny']}", "--engine", "onnxruntime", "--ray", "local",
                            "--replicas", "2", "--token", "t0k"])
    reference = Model(serve_models["tiny"], engine="onnxruntime")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (36, 52, 3), dtype=np.uint8)
    png = cv2.imencode(".png", image)[1].tobytes()
    host, port = server.address.rsplit(":", 1)

    def segment(_: int) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request("POST", "/v1/models/tiny/segment", body=png, headers={"Authorization": "Bearer t0k"})
        response = connection.getresponse()
        answer = (response.status, response.getheader("x-edgeseg-replica", ""), response.read())
        connection.close()
        return answer

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(segment, range(32)))
    assert all(status == 200 for status, _, _ in answers), answers[:3]
    assert len({replica for _, replica, _ in answers}) == 2  # both replicas took requests
    expected = reference(image).class_fraction
    assert all(np.isclose(float(json.loads(body)["class_fraction"]["thing"]), expected["thing"])
               for _, _, body in answers)

    client = triton.InferenceServerClient(server.address)
    batch = preprocess(image, reference.contract.input)[0]
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("tiny", [tensor], headers={"Authorization": "Bearer t0k"})
    np.testing.assert_allclose(result.as_numpy("scores"), reference.run(batch), rtol=0, atol=1e-6)
    assert segment(0)[0] == 200 and client.is_server_ready()  # health needs no token, through Ray's proxy too
    assert server.terminate() < 30 and server.proc.returncode == 0
