"""A running ``edgeseg serve`` used like a :class:`Model`: ``Client(url, "fcn8")(image)`` gives the same
:class:`SegmentationResult` (mask at the image's size, class fractions) as ``Model("fcn8.onnx")(image)``.

Only the standard library and OpenCV (the runtime's own dependencies): an app that calls a server
needs none of the server's packages. The image goes as a PNG to ``/v1/models/NAME/segment`` with
``Accept: image/png``; the mask comes back as a palette PNG of class ids; the class fractions are
computed here from the mask with the runtime's own function, so they match ``Model``'s exactly. For raw
tensors (the Open Inference Protocol), use the stock ``tritonclient`` instead (README, "Serving").
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime._imagebytes import decode_mask_png
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.postprocess import SegmentationResult, class_fraction


class Client:
    """One model of a running ``edgeseg serve``, called like a :class:`Model`.

    ``url``: the server (``http://host:8000``); ``token``: its bearer token, if it has one; ``context``: an
    ``ssl.SSLContext`` for HTTPS with a private certificate. The model's metadata (contract, classes) is
    read once, here: an unknown model, a wrong token or a server that is down fail now, as EdgesegError.
    A request the server refuses for its image raises BadInputError (it costs that image only).

    Example::

        model = Client("http://127.0.0.1:8000", "fcn8")
        result = model(cv2.imread("street.png"))        # result.mask, result.class_fraction, as with Model
    """

    def __init__(self, url: str, model: str, *, token: str | None = None, timeout: float = 30.0,
                 context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.name = model
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._context = context
        self.metadata: dict[str, Any] = json.loads(self._request("GET", f"/v2/models/{model}", None, {}))
        contract = self.metadata.get("edgeseg", {}).get("contract", {})
        if contract.get("kind") != "segmentation":
            raise EdgesegError(f"model {model!r} at {self.url} is not a segmentation model served by edgeseg "
                               f"(kind {contract.get('kind')!r}): use tritonclient for its tensors.")
        self.classes = tuple(contract["output"]["classes"])

    def __call__(self, image: np.ndarray) -> SegmentationResult:
        """Segment one frame (BGR, BGRA or gray, 8 or 16 bit, any size) on the server."""
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise BadInputError(f"cannot encode an image of shape {getattr(image, 'shape', None)} as PNG")
        body = self._request("POST", f"/v1/models/{self.name}/segment", png.tobytes(),
                             {"Content-Type": "image/png", "Accept": "image/png"})
        mask = decode_mask_png(body)
        return SegmentationResult(mask=mask, class_fraction=class_fraction(mask, self.classes))

    def predict_batch(self, images: list[np.ndarray]) -> list[SegmentationResult]:
        """Several frames, one request each (the server batches concurrent requests, not this call)."""
        return [self(image) for image in images]

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={**self._headers, **headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            try:
                reason = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                reason = error.reason
            if error.code == 400 and path.endswith("/segment"):
                raise BadInputError(f"the server refused the image: {reason}") from None
            raise EdgesegError(f"{method} {self.url}{path}: HTTP {error.code}: {reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise EdgesegError(f"cannot reach edgeseg serve at {self.url}: {getattr(error, 'reason', error)}") from None
