"""Ed25519 signatures over exact payload bytes (cortensor.protocol.signing)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.signing import (
    SIGNATURE_HEADER,
    decode_signature,
    encode_signature,
    public_bytes,
    result_msg_id,
    sign,
    signature_headers,
    signature_of,
    verify,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
payloads = st.binary(max_size=4096)


@given(payloads)
def test_any_payload_signs_and_verifies(payload: bytes) -> None:
    signature = sign(KEY, payload)
    assert verify(public_bytes(KEY), payload, signature)
    assert signature_of(signature_headers(signature)) == signature


@given(payloads.filter(bool), st.data())
def test_any_flipped_bit_fails(payload: bytes, data: st.DataObject) -> None:
    signature = sign(KEY, payload)
    bit = data.draw(st.integers(0, len(payload) * 8 - 1))
    flipped = bytearray(payload)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify(public_bytes(KEY), bytes(flipped), signature)
    sig_bit = data.draw(st.integers(0, len(signature) * 8 - 1))
    bad = bytearray(signature)
    bad[sig_bit // 8] ^= 1 << (sig_bit % 8)
    assert not verify(public_bytes(KEY), payload, bytes(bad))


@given(payloads)
def test_another_key_fails(payload: bytes) -> None:
    assert not verify(public_bytes(OTHER), payload, sign(KEY, payload))


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_keys_and_signatures_of_the_wrong_size_fail_cleanly(key: bytes, sig: bytes) -> None:
    assert not verify(key, b"payload", sig)


@given(st.one_of(st.none(), st.text(max_size=120), st.integers()))
def test_malformed_headers_carry_no_signature(value: object) -> None:
    decoded = signature_of({SIGNATURE_HEADER: value})
    assert decoded is None or encode_signature(decoded) == value


def test_a_header_must_be_exact_base64_of_64_bytes() -> None:
    good = encode_signature(sign(KEY, b"x"))
    assert decode_signature(good) is not None
    assert decode_signature(good.replace("=", "")) is None
    assert decode_signature(good[:-3] + "!==") is None
    assert decode_signature(encode_signature(b"\0" * 63)) is None
    assert signature_of(None) is None
    assert signature_of({}) is None


def test_the_result_msg_id_is_stable_for_the_same_bytes_and_differs_otherwise() -> None:
    first = result_msg_id(sign(KEY, b"result"))
    assert first == result_msg_id(sign(KEY, b"result"))
    assert first != result_msg_id(sign(KEY, b"result "))
    assert first != result_msg_id(sign(OTHER, b"result"))
