"""agents.media.provenance with the real c2pa library: a local CA made on first use (or a configured chain),
a signed MP4 that verifies with its signer and claims, and every one-byte edit of its media data or index
caught."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import struct
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from framebus.agents.media.encode import encode_mp4
from framebus.agents.media.provenance import (
    ASSERTION_LABEL,
    TRAINED_ALGORITHMIC_MEDIA,
    ensure_signing_identity,
    generation_claims,
    sign_mp4,
    trust_anchors,
    verify,
)
from framebus.topics.errors import GenerationError

CLAIMS = generation_claims(
    prompt="a red kite over the sea",
    model="tiny-ltx",
    model_version="c4a02bbe00e7",
    seed=7,
    steps=6,
    guidance=3.0,
    source_sha256=None,
    created=dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC),
    job_id="job-1",
)


def boxes(path: Path) -> dict[str, tuple[int, int]]:
    """Top-level ISO BMFF boxes: type -> (offset, size)."""
    data, found, pos = path.read_bytes(), {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        found.setdefault(kind.decode("latin-1"), (pos, size))
        pos += size if size else len(data)
    return found


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("provenance-data")


@pytest.fixture(scope="module")
def identity(data_dir):
    return ensure_signing_identity(data_dir)


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    return encode_mp4(frames, tmp_path_factory.mktemp("clips") / "unsigned.mp4", 12).path


@pytest.fixture(scope="module")
def signed(unsigned, identity, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("signed") / "signed.mp4"
    sign_mp4(unsigned, dst, CLAIMS, identity)
    return dst


# --- identity ----------------------------------------------------------------------------------------


def test_local_identity_is_a_ca_and_an_end_entity_certificate(data_dir, identity):
    folder = data_dir / "provenance"
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((folder / "signer.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"
    assert identity.alg == "es256" and identity.source == "local"
    assert identity.trust_anchors == (folder / "ca.pem").read_bytes()
    assert b"BEGIN CERTIFICATE" in identity.cert_chain and identity.cert_chain.count(b"BEGIN CERTIFICATE") == 1


def test_key_file_is_private(data_dir, identity):
    mode = os.stat(data_dir / "provenance" / "signer.key").st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert b"PRIVATE KEY" in identity.key and "PRIVATE KEY" not in repr(identity)  # the key stays out of logs


def test_identity_is_made_once(data_dir, identity):
    again = ensure_signing_identity(data_dir)
    assert again.cert_chain == identity.cert_chain and again.trust_anchors == identity.trust_anchors


def test_concurrent_first_use_makes_one_identity(tmp_path):
    chains = []
    threads = [
        threading.Thread(target=lambda: chains.append(ensure_signing_identity(tmp_path).cert_chain)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(chains) == 4 and len(set(chains)) == 1


# --- sign and verify ---------------------------------------------------------------------------------


def test_signed_video_verifies_with_its_signer_and_claims(signed, identity):
    result = verify(signed, trust_anchors=identity.trust_anchors)
    assert result.valid and result.trusted and result.signed and not result.altered
    assert result.state == "Trusted"
    assert result.failures == []
    assert result.signer["subject"]["CN"] == "framebus generator"
    assert result.signer["issuer"]["CN"].startswith("framebus local CA")
    assert result.claim_generator.startswith("framebus/")
    assert result.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert result.claims == CLAIMS
    assert result.claims["prompt_sha256"] != "a red kite over the sea"  # the prompt itself is not in the file
    assert "assertion.bmffHash.match" in result.successes


def test_signed_video_still_plays(signed, unsigned):
    with av.open(str(signed)) as container, av.open(str(unsigned)) as original:
        assert container.streams.video[0].frames == original.streams.video[0].frames == 12
        assert sum(1 for _ in container.decode(video=0)) == 12
    order = sorted(boxes(signed), key=lambda k: boxes(signed)[k][0])
    assert order.index("moov") < order.index("mdat")  # still faststart


def test_sign_returns_what_was_signed(unsigned, identity, tmp_path):
    out = sign_mp4(unsigned, tmp_path / "s.mp4", CLAIMS, identity)["c2pa"]
    assert out["assertion"] == ASSERTION_LABEL
    assert out["bytes"] == (tmp_path / "s.mp4").stat().st_size
    assert out["signer"] == identity.subject and out["alg"] == "es256"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mp4"]


@pytest.mark.parametrize(
    ("box", "where"),
    [("mdat", "first"), ("mdat", "middle"), ("mdat", "last"), ("moov", "middle")],
)
def test_a_one_byte_edit_of_the_media_data_or_index_fails(signed, identity, tmp_path, box, where):
    offset, size = boxes(signed)[box]
    pos = {"first": offset + 8, "middle": offset + size // 2, "last": offset + size - 1}[where]
    data = bytearray(signed.read_bytes())
    data[pos] ^= 0x01
    edited = tmp_path / "edited.mp4"
    edited.write_bytes(bytes(data))
    result = verify(edited, trust_anchors=identity.trust_anchors)
    assert not result.valid
    assert result.altered
    assert "assertion.bmffHash.mismatch" in result.failures
    assert result.state == "Invalid"


def test_an_edit_of_the_manifest_breaks_its_signature(signed, identity, tmp_path):
    offset, size = boxes(signed)["uuid"]
    data = bytearray(signed.read_bytes())
    data[offset + size - 1] ^= 0x01
    edited = tmp_path / "edited.mp4"
    edited.write_bytes(bytes(data))
    result = verify(edited, trust_anchors=identity.trust_anchors)
    assert not result.valid and result.altered
    assert "claimSignature.mismatch" in result.failures


def test_a_file_without_a_manifest_is_reported_not_signed(unsigned, identity):
    result = verify(unsigned, trust_anchors=identity.trust_anchors)
    assert (result.signed, result.valid, result.altered, result.state) == (False, False, False, "NotSigned")
    assert "not signed" in result.message


def test_an_unknown_signer_is_intact_but_not_valid(signed, tmp_path):
    other = ensure_signing_identity(tmp_path)  # another deployment's CA
    for anchors in (None, other.trust_anchors):
        result = verify(signed, trust_anchors=anchors)
        assert not result.valid and not result.trusted and not result.altered
        assert result.failures == ["signingCredential.untrusted"]


def test_a_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(GenerationError) as err:
        verify(tmp_path / "gone.mp4")
    assert err.value.code == "provenance.unreadable"


def test_claims_must_be_json(unsigned, identity, tmp_path):
    with pytest.raises(GenerationError) as err:
        sign_mp4(unsigned, tmp_path / "s.mp4", {"seed": object()}, identity)
    assert err.value.code == "provenance.sign_failed"
    assert list(tmp_path.iterdir()) == []


# --- a configured chain --------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Media"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _cert(subject, issuer, key, issuer_key, *, ca: bool, aki: bool = True, days: float = 30):
    now = dt.datetime.now(dt.UTC)
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
    )
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if aki and subject != issuer:  # C2PA's certificate profile wants the authority key id on issued certificates
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(aki, critical=False)
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def external_chain(tmp_path_factory):
    """A deployment's own PKI: root -> intermediate -> P-384 signer; the chain file holds all three."""
    folder = tmp_path_factory.mktemp("pki")
    root_key, inter_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert(_name("Example Root"), _name("Example Root"), root_key, root_key, ca=True)
    inter = _cert(_name("Example Intermediate"), root.subject, inter_key, root_key, ca=True)
    leaf = _cert(_name("Example Newsroom"), inter.subject, leaf_key, inter_key, ca=False)
    chain = folder / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, inter, root)))
    key = folder / "key.pem"
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    return chain, key, root


def test_a_configured_chain_signs_instead_of_the_local_ca(external_chain, unsigned, tmp_path):
    chain, key, root = external_chain
    identity = ensure_signing_identity(tmp_path / "data", cert_chain=chain, key=key)
    assert identity.source == "configured" and identity.alg == "es384"
    assert identity.cert_chain.count(b"BEGIN CERTIFICATE") == 2  # the root is left out of the signed chain
    assert identity.trust_anchors == root.public_bytes(serialization.Encoding.PEM)
    assert not (tmp_path / "data" / "provenance").exists()  # no local CA was made
    sign_mp4(unsigned, tmp_path / "s.mp4", CLAIMS, identity)
    result = verify(tmp_path / "s.mp4", trust_anchors=trust_anchors(tmp_path / "data", chain))
    assert result.valid
    assert result.signer["subject"]["CN"] == "Example Newsroom"
    assert result.signer["issuer"]["CN"] == "Example Intermediate"


def test_a_configured_key_must_match_its_certificate(external_chain, tmp_path):
    chain, _, _ = external_chain
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for kwargs in ({"cert_chain": chain, "key": wrong}, {"cert_chain": chain}, {"cert_chain": wrong, "key": wrong}):
        with pytest.raises(GenerationError) as err:
            ensure_signing_identity(tmp_path, **kwargs)
        assert err.value.code == "provenance.bad_identity"


# --- the command ---------------------------------------------------------------------------------------


def test_cli_verify_prints_the_verdict_and_exits_by_it(signed, data_dir, tmp_path):
    from framebus.streams.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["provenance", "verify", str(signed), "--data-dir", str(data_dir)])
    assert ok.exit_code == 0, ok.output
    assert "VALID" in ok.output and "framebus generator" in ok.output and "job-1" in ok.output

    data = bytearray(signed.read_bytes())
    offset, size = boxes(signed)["mdat"]
    data[offset + size // 2] ^= 0x01
    (tmp_path / "edited.mp4").write_bytes(bytes(data))
    bad = runner.invoke(
        app, ["provenance", "verify", str(tmp_path / "edited.mp4"), "--data-dir", str(data_dir), "--json"]
    )
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["altered"] and not report["valid"]

    untrusted = runner.invoke(app, ["provenance", "verify", str(signed), "--data-dir", str(tmp_path / "elsewhere")])
    assert untrusted.exit_code == 1 and "not trusted" in untrusted.output


@pytest.mark.parametrize(
    ("change", "message"), [({"aki": False}, "authority key identifier"), ({"days": -0.01}, "not now")]
)
def test_a_configured_certificate_outside_the_c2pa_profile_is_refused(tmp_path, change, message):
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _cert(_name("Example Root"), _name("Example Root"), root_key, root_key, ca=True)
    leaf = _cert(_name("Example Newsroom"), root.subject, leaf_key, root_key, ca=False, **change)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(GenerationError) as err:
        ensure_signing_identity(tmp_path, cert_chain=chain, key=key)
    assert err.value.code == "provenance.bad_identity"
    assert message in err.value.message
