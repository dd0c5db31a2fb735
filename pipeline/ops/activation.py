"""``POST /xiaozhi/ota/activate``: the device polls until its owner has bound the code it shows.

The firmware (``Ota::Activate``) posts, with the same headers as its check-in, either ``{}`` or,
when it has a serial number burned in eFuse (``Activation-Version: 2``)::

    {"algorithm": "hmac-sha256", "serial_number": "...", "challenge": "...", "hmac": "<64 hex>"}

``hmac`` is HMAC-SHA256 over the challenge string from our OTA reply, computed by the chip's HMAC
peripheral with the key in eFuse key block ``HMAC_KEY0``; the key never leaves the chip, so the
server can check it only if the key was provisioned here (``xiaozhi-trio devices key SERIAL HEX``,
e.g. from the manufacturer's list). Chips without an HMAC peripheral send an empty ``hmac``.

Answers: 202 while waiting for the owner (the firmware retries in 3 s), 200 once bound, anything
else on a bad or unprovable request (the firmware retries in 10 s, and after ten tries checks in
again for a fresh code).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from ..store.devices import Device
from .h11server import Request, Response, error_response, json_response
from .ota import BadRequest, read_identity, read_json_object

if TYPE_CHECKING:
    from .services import OpsServices

log = logging.getLogger(__name__)


def expected_hmac(key: bytes, challenge: str) -> str:
    """What the firmware sends for ``challenge``: lower-case hex HMAC-SHA256."""
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()


async def _check_proof(services: OpsServices, device: Device, body: dict[str, Any]) -> bool:
    """True if the body proves the device's serial number; False if nothing can be proven.

    Raises ``BadRequest`` for a wrong or missing proof where one is required.
    """
    needs = await services.registry.needs_proof(device)
    if "algorithm" not in body:
        if needs:
            raise BadRequest("this device has a serial number and must sign the challenge", 403)
        return False
    if body.get("algorithm") != "hmac-sha256":
        raise BadRequest(f"unsupported algorithm {body.get('algorithm')!r}; expected hmac-sha256")
    serial, challenge, signature = body.get("serial_number"), body.get("challenge"), body.get("hmac")
    if not (isinstance(serial, str) and isinstance(challenge, str) and isinstance(signature, str)):
        raise BadRequest("serial_number, challenge and hmac must be strings")
    if serial != device.serial_number:
        raise BadRequest("serial_number differs from the Serial-Number the device checked in with", 403)
    if not device.activation_challenge or not hmac.compare_digest(challenge.encode(), device.activation_challenge.encode()):
        raise BadRequest("challenge does not match the one issued; the device must check in again", 403)
    key = await services.registry.key_for(serial)
    if key is None:
        if needs:
            raise BadRequest(f"no HMAC key is provisioned for serial number {serial}", 403)
        return False
    if not hmac.compare_digest(signature.strip().lower().encode(), expected_hmac(key, challenge).encode()):
        raise BadRequest("hmac does not match the device key for this serial number", 403)
    return True


async def handle_activate(services: OpsServices, request: Request) -> Response:
    """Answer 200 if the device is bound, 202 while its owner has yet to bind its code."""
    try:
        device_id, client_id = read_identity(request)
        body = read_json_object(request)
    except BadRequest as e:
        services.metrics.activations.inc(result="rejected")
        return error_response(e.status, str(e))
    extra = {"device": device_id}
    device = await services.registry.get(device_id)
    if device is None:
        services.metrics.activations.inc(result="rejected")
        return error_response(404, "unknown device: check in at the OTA URL first")
    now = services.clock()
    if device.bound and device.client_id == client_id and not device.claim_for(client_id, now):
        services.metrics.activations.inc(result="activated")
        return json_response(200, {"status": "activated"})
    if not device.claim_for(client_id, now):
        services.metrics.activations.inc(result="rejected")
        return error_response(409, "no activation is pending for this device (the code may have expired); check in again")
    try:
        proven = await _check_proof(services, device, body)
    except BadRequest as e:
        log.warning("activation of device %s refused: %s", device_id, e, extra=extra)
        services.metrics.activations.inc(result="rejected")
        return error_response(e.status, str(e))
    device = await services.registry.complete_activation(device_id, client_id, proven=proven)
    if device is not None and device.bound and device.client_id == client_id and device.activation_code is None:
        log.info("device %s activated", device_id, extra=extra)
        services.metrics.activations.inc(result="activated")
        return json_response(200, {"status": "activated"})
    services.metrics.activations.inc(result="waiting")
    code = device.activation_code if device is not None else None
    return json_response(202, {"status": "waiting", "message": f"waiting for the owner to run: xiaozhi-trio devices bind {code}"})
