"""Cross-signing: the master, self-signing and user-signing keys of a user, and signatures of
devices and master keys (client-server "Cross-signing").

Who may sign what:
- the user's self-signing key signs the user's own devices;
- the user's own devices sign the user's master key;
- the user's user-signing key signs other users' master keys (only the signer sees those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.e2ee.validation import (
    INVALID_SIGNATURE,
    bad_json,
    check_public_key,
    check_signatures_shape,
    signature_ok,
    split_key_id,
    strip,
)
from homeserver.storage.e2ee import CROSS_SIGNING_TYPES, E2eKeyStore, Signature

JsonDict = dict[str, Any]

_FIELDS = {"master_key": "master", "self_signing_key": "self_signing",
           "user_signing_key": "user_signing"}


def _signature_error(message: str) -> MatrixError:
    return MatrixError(400, INVALID_SIGNATURE, message)


@dataclass(frozen=True)
class CrossSigningKey:
    public_key: str
    json: JsonDict

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public_key}"


def parse_cross_signing_key(raw: Any, user_id: str, key_type: str) -> CrossSigningKey:
    """Shape, owner, usage and the single ed25519 key; 400 M_INVALID_PARAM otherwise."""
    what = f"{key_type} key"
    if not isinstance(raw, dict):
        raise bad_json(f"The {what} must be an object")
    if raw.get("user_id") != user_id:
        raise MatrixError(400, Codes.INVALID_PARAM, f"The {what} must belong to {user_id}")
    usage = raw.get("usage")
    if not isinstance(usage, list) or not all(isinstance(u, str) for u in usage):
        raise MatrixError(400, Codes.INVALID_PARAM, f"The {what} needs a 'usage' list")
    if key_type not in usage:
        raise MatrixError(400, Codes.INVALID_PARAM, f"The {what} must have usage {key_type!r}")
    keys = raw.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise MatrixError(400, Codes.INVALID_PARAM, f"The {what} must hold exactly one key")
    ((key_id, public_key),) = keys.items()
    algorithm, name = split_key_id(key_id, what)
    if algorithm != "ed25519" or name != public_key:
        raise MatrixError(400, Codes.INVALID_PARAM,
                          f"The {what} must be named ed25519:<its unpadded base64 public key>")
    check_public_key(public_key, what)
    check_signatures_shape(raw, what)
    return CrossSigningKey(public_key, {k: v for k, v in raw.items() if k != "unsigned"})


class CrossSigningService:
    def __init__(self, store: E2eKeyStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def needs_authentication(self, user_id: str, body: JsonDict) -> bool:
        """Whether this upload needs user-interactive auth. As in Synapse (and the spec since
        v1.11), it does not when the user has no master key yet, or when every key in the
        request equals the stored one (a retried upload)."""
        master = await self.store.get_cross_signing_key(user_id, "master")
        if master is None:
            return False
        for field, key_type in _FIELDS.items():
            if field in body and body[field] is not None:
                if await self.store.get_cross_signing_key(user_id, key_type) != body[field]:
                    return True
        return False

    async def upload_keys(self, user_id: str, body: JsonDict) -> None:
        new: dict[str, CrossSigningKey] = {}
        for field, key_type in _FIELDS.items():
            if body.get(field) is not None:
                new[key_type] = parse_cross_signing_key(body[field], user_id, key_type)
        if not new:
            return
        master = new.get("master")
        if master is None:
            stored = await self.store.get_cross_signing_key(user_id, "master")
            if stored is None:
                raise MatrixError(400, Codes.MISSING_PARAM, "No master key available")
            master = parse_cross_signing_key(stored, user_id, "master")
        else:
            await self._check_master_signatures(user_id, master)
        for key_type in ("self_signing", "user_signing"):
            key = new.get(key_type)
            if key is not None and not signature_ok(
                key.json, user_id, master.key_id, master.public_key
            ):
                raise _signature_error(f"The {key_type} key must be signed by the master key")
        # Device IDs and cross-signing keys share one namespace in verification.
        for key in new.values():
            if await self.store.has_device(user_id, key.public_key):
                raise MatrixError(403, Codes.FORBIDDEN, "Key ID in use by a device")
        publics = [k.public_key for k in new.values()]
        if len(set(publics)) != len(publics):
            raise MatrixError(400, Codes.INVALID_PARAM, "Cross-signing keys must differ")
        await self.store.set_cross_signing_keys(
            user_id, {t: (k.public_key, k.json) for t, k in new.items()}, self.clock.time_ms()
        )

    async def _check_master_signatures(self, user_id: str, master: CrossSigningKey) -> None:
        """A master key may arrive signed by the user's devices (or itself); any signature we
        can check must be valid."""
        devices = await self.store.all_device_keys(user_id)
        sigs = master.json.get("signatures", {}).get(user_id, {})
        for key_id in sigs:
            algorithm, _, name = key_id.partition(":")
            if algorithm != "ed25519":
                continue
            if name == master.public_key:
                public = master.public_key
            elif name in devices and key_id in devices[name].get("keys", {}):
                public = devices[name]["keys"][key_id]
            else:
                continue
            if not signature_ok(master.json, user_id, key_id, public):
                raise _signature_error(f"Invalid signature {key_id} on the master key")

    # -- signatures ------------------------------------------------------------------------

    async def upload_signatures(self, user_id: str, body: JsonDict) -> JsonDict:
        for objects in body.values():
            if not isinstance(objects, dict) or not all(
                isinstance(o, dict) for o in objects.values()
            ):
                raise bad_json("Expected a map of user IDs to key IDs to signed objects")
        failures: dict[str, dict[str, JsonDict]] = {}
        accepted: list[Signature] = []
        for target_user, objects in body.items():
            for target_key_id, signed in objects.items():
                try:
                    if target_user == user_id:
                        accepted.extend(
                            await self._own_signatures(user_id, target_key_id, signed)
                        )
                    else:
                        accepted.extend(
                            await self._other_signature(user_id, target_user, target_key_id,
                                                        signed)
                        )
                except MatrixError as e:
                    failures.setdefault(target_user, {})[target_key_id] = {
                        "errcode": e.errcode, "error": e.message, "status": e.status,
                    }
        if accepted:
            await self.store.add_signatures(user_id, accepted)
        return {"failures": failures}

    async def _own_signatures(
        self, user_id: str, target_key_id: str, signed: JsonDict
    ) -> list[Signature]:
        master_json = await self.store.get_cross_signing_key(user_id, "master")
        master = parse_cross_signing_key(master_json, user_id, "master") if master_json else None
        if master is not None and target_key_id == master.public_key:
            return await self._master_signed_by_devices(user_id, master, signed)
        # Otherwise it is one of the user's devices, signed by the self-signing key.
        devices = await self.store.all_device_keys(user_id)
        stored = devices.get(target_key_id)
        if stored is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown device or key")
        ssk_json = await self.store.get_cross_signing_key(user_id, "self_signing")
        if ssk_json is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No self-signing key")
        ssk = parse_cross_signing_key(ssk_json, user_id, "self_signing")
        _same_object(signed, stored)
        sig = _signatures(signed).get(user_id, {}).get(ssk.key_id)
        if not isinstance(sig, str) or not signature_ok(
            signed, user_id, ssk.key_id, ssk.public_key
        ):
            raise _signature_error("Invalid signature: devices are signed by the self-signing key")
        return [Signature(user_id, ssk.key_id, user_id, target_key_id, sig)]

    async def _master_signed_by_devices(
        self, user_id: str, master: CrossSigningKey, signed: JsonDict
    ) -> list[Signature]:
        _same_object(signed, master.json)
        devices = await self.store.all_device_keys(user_id)
        given = _signatures(signed).get(user_id, {})
        if not given:
            raise _signature_error("No signature of the master key by one of your devices")
        out = []
        for key_id, sig in given.items():
            if key_id in master.json.get("signatures", {}).get(user_id, {}):
                continue  # uploaded with the key itself
            algorithm, _, device_id = key_id.partition(":")
            device = devices.get(device_id)
            public = (device or {}).get("keys", {}).get(key_id)
            if algorithm != "ed25519" or not isinstance(public, str):
                raise _signature_error(
                    f"Invalid signature: {key_id} is not a key of one of your devices"
                )
            if not signature_ok(signed, user_id, key_id, public):
                raise _signature_error(f"Invalid signature by {key_id}")
            out.append(Signature(user_id, key_id, user_id, master.public_key, sig))
        return out

    async def _other_signature(
        self, user_id: str, target_user: str, target_key_id: str, signed: JsonDict
    ) -> list[Signature]:
        usk_json = await self.store.get_cross_signing_key(user_id, "user_signing")
        if usk_json is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No user-signing key")
        usk = parse_cross_signing_key(usk_json, user_id, "user_signing")
        master_json = await self.store.get_cross_signing_key(target_user, "master")
        if master_json is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"No master key known for {target_user}")
        master = parse_cross_signing_key(master_json, target_user, "master")
        if target_key_id != master.public_key:
            raise MatrixError(
                404, Codes.NOT_FOUND,
                "Other users' keys can only be signed on their master key",
            )
        _same_object(signed, master.json)
        sig = _signatures(signed).get(user_id, {}).get(usk.key_id)
        if not isinstance(sig, str) or not signature_ok(
            signed, user_id, usk.key_id, usk.public_key
        ):
            raise _signature_error(
                "Invalid signature: other users' master keys are signed by your user-signing key"
            )
        return [Signature(user_id, usk.key_id, target_user, master.public_key, sig)]


def _signatures(obj: JsonDict) -> dict[str, dict[str, Any]]:
    sigs = obj.get("signatures")
    if not isinstance(sigs, dict):
        return {}
    return {k: v for k, v in sigs.items() if isinstance(v, dict)}


def _same_object(signed: JsonDict, stored: JsonDict) -> None:
    if strip(signed) != strip(stored):
        raise MatrixError(400, Codes.INVALID_PARAM,
                          "The signed object does not match the stored key")


__all__ = ["CROSS_SIGNING_TYPES", "CrossSigningService", "parse_cross_signing_key"]
