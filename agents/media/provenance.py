"""C2PA provenance of generated videos (``c2pa-python``): who made a file, how, and whether it changed since.

- ``ensure_signing_identity(data_dir)``: the certificate chain and key that sign. By default a local CA
  made on first use under ``<data_dir>/provenance/`` (a self-signed P-256 root, and an end-entity
  certificate it issued: CA:false, digitalSignature, extendedKeyUsage emailProtection, the usages C2PA
  accepts). C2PA refuses a self-signed signing certificate, hence two. A deployment configures its own
  PEM chain and key instead (``Settings.provenance_cert``/``provenance_key``).
- ``sign_mp4(src, dst, claims, identity)``: embeds a manifest: claim generator ``framebus/<version>``,
  the action ``c2pa.created`` with digital source type ``trainedAlgorithmicMedia``, and the assertion
  ``org.framebus.generation`` holding ``claims`` (input hashes, model, seed, steps, ...). Signed offline: no
  timestamp authority, so the signature's time is the signer's word.
- ``verify(path, trust_anchors=...)``: checks the manifest's signature, the hashes over the file's boxes
  (a changed byte of the media data or the index is an ``assertion.bmffHash.mismatch``) and the signer's
  chain against the given anchors, and reports it as a ``VerifyResult``.

What the hash does not cover, by the C2PA rules for MP4: the ``ftyp``, ``free``/``skip`` and ``mfra``
boxes and the manifest's own ``uuid`` box (whose signature covers it).

Errors: ``GenerationError`` with ``provenance.bad_identity`` (a configured chain or key that cannot
sign, or a damaged local identity), ``provenance.sign_failed`` (c2pa refused to sign, or the output
cannot be written), ``provenance.unreadable`` (``verify`` of a file that cannot be read).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from framebus.agents.media.encode import atomic_path, file_sha256
from framebus.topics.errors import GenerationError

log = logging.getLogger(__name__)

ASSERTION_LABEL = "org.framebus.generation"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: the local identity's files under ``<data_dir>/provenance/``; the CA certificate is written last
CA_FILE, CHAIN_FILE, KEY_FILE = "ca.pem", "signer.pem", "signer.key"
CA_DAYS, SIGNER_DAYS = 3650, 1825
#: validation codes that are about the signer's credentials, not about the content
_CREDENTIAL_CODES = ("signingCredential.", "timeStamp.")


@dataclass(frozen=True)
class Identity:
    """What signs. ``cert_chain``: PEM, the end-entity certificate first, then intermediates, no root (C2PA
    wants the root out of the chain). ``trust_anchors``: PEM root(s) a verifier needs to trust it (the
    local CA; the self-signed certificates of a configured chain file, if any). ``source``: ``local`` or
    ``configured``."""

    cert_chain: bytes
    key: bytes = field(repr=False)
    alg: str
    subject: str
    issuer: str
    not_after: dt.datetime
    trust_anchors: bytes | None
    source: str
    cert_path: Path | None = None


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found.

    ``signed``: a C2PA manifest is embedded. ``valid``: signed, every check passed and the signer chains to
    one of the trust anchors (c2pa's ``Trusted`` state). ``altered``: the content or the manifest changed
    after signing (a hash or signature mismatch). ``trusted``: the signer chains to a trust anchor.
    ``state``: c2pa's validation state (``Trusted``, ``Valid``: intact but not trusted, ``Invalid``), or
    ``NotSigned``/``Unreadable``. ``signer``: the signing certificate's ``subject`` and ``issuer`` (as
    ``{"CN": ..., "O": ...}``), ``serial``, ``alg``. ``claims``: the ``org.framebus.generation`` assertion.
    ``failures``: c2pa's failure codes (``assertion.bmffHash.mismatch``, ``signingCredential.untrusted``, ...).
    """

    path: str
    signed: bool
    valid: bool
    altered: bool
    trusted: bool
    state: str
    signer: dict[str, Any] | None = None
    claim_generator: str | None = None
    digital_source_type: str | None = None
    claims: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    successes: list[str] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "signed": self.signed,
            "valid": self.valid,
            "altered": self.altered,
            "trusted": self.trusted,
            "state": self.state,
            "signer": self.signer,
            "claim_generator": self.claim_generator,
            "digital_source_type": self.digital_source_type,
            "claims": self.claims,
            "failures": self.failures,
            "successes": self.successes,
            "message": self.message,
        }


# --- signing identity ----------------------------------------------------------------------------------


def ensure_signing_identity(
    data_dir: str | os.PathLike,
    *,
    cert_chain: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
) -> Identity:
    """The identity that signs: the configured ``cert_chain`` (PEM file, leaf first) and ``key`` (PEM
    private key file) when given, else the local CA under ``<data_dir>/provenance/``, made on first use
    (key file mode 0600, folder 0700; concurrent first calls make one identity: a file lock).

    Raises ``GenerationError(provenance.bad_identity)``: only one of ``cert_chain``/``key`` given, a file
    that cannot be read or parsed, a key that does not match the certificate, a signing certificate that is
    a CA, is not valid now, or lacks the authority key identifier or extended key usage C2PA requires.
    """
    if (cert_chain is None) != (key is None):
        raise GenerationError(
            "configure both provenance_cert and provenance_key, or neither", code="provenance.bad_identity"
        )
    if cert_chain is not None and key is not None:
        chain_pem, key_pem = _read(Path(cert_chain)), _read(Path(key))
        if os.stat(key).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("provenance key %s is readable by other users (mode %o)", key, os.stat(key).st_mode & 0o777)
        return _identity(chain_pem, key_pem, source="configured", cert_path=Path(cert_chain))

    folder = Path(data_dir) / "provenance"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / CA_FILE).exists():
                _make_local_ca(folder)
            chain_pem, key_pem = _read(folder / CHAIN_FILE), _read(folder / KEY_FILE)
            ca_pem = _read(folder / CA_FILE)
    except OSError as e:
        raise GenerationError(
            f"cannot create the local signing identity in {folder}: {e}", code="provenance.bad_identity"
        ) from None
    try:
        return _identity(chain_pem, key_pem, source="local", cert_path=folder / CHAIN_FILE, anchors=ca_pem)
    except GenerationError as e:
        raise GenerationError(
            f"{e.message} (remove {folder} to make a new local CA; files signed by the old one then no longer verify "
            "unless its ca.pem is kept as a trust anchor)",
            code=e.code,
        ) from None


def trust_anchors(data_dir: str | os.PathLike, cert_chain: str | os.PathLike | None = None) -> bytes | None:
    """The PEM roots a verifier on this deployment trusts: the local CA's certificate if
    ``<data_dir>/provenance/`` has one, and the self-signed certificates of the configured ``cert_chain``
    file. Reads no key and creates nothing; ``None`` when there are none."""
    found = b""
    with contextlib.suppress(FileNotFoundError):
        found += (Path(data_dir) / "provenance" / CA_FILE).read_bytes()
    if cert_chain is not None:
        try:
            certs = x509.load_pem_x509_certificates(_read(Path(cert_chain)))
        except ValueError as e:
            raise GenerationError(
                f"unreadable certificate chain {cert_chain}: {e}", code="provenance.bad_identity"
            ) from None
        found += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs if _self_signed(c))
    return found or None


def _make_local_ca(folder: Path) -> None:
    """A self-signed root and an end-entity certificate it issues; the root's key is not kept (nothing else
    is ever issued: a new identity is a new CA)."""
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # clock skew between this host and a verifier
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"framebus local CA {os.urandom(4).hex()}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(_name("framebus generator"))
        .issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=SIGNER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = signer_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(folder / KEY_FILE, key_pem, mode=0o600)
    _write(folder / CHAIN_FILE, signer.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(folder / CA_FILE, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "framebus"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` through a new file created with ``mode`` (never wider), then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GenerationError(f"cannot read {path}: {e}", code="provenance.bad_identity") from None


def _identity(
    chain_pem: bytes, key_pem: bytes, *, source: str, cert_path: Path, anchors: bytes | None = None
) -> Identity:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise GenerationError(
            f"unreadable certificate chain or key ({cert_path}): {e}", code="provenance.bad_identity"
        ) from None
    leaf = certs[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(serialization.Encoding.DER, pub) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise GenerationError(
            f"the key does not belong to the first certificate of {cert_path}", code="provenance.bad_identity"
        )
    with contextlib.suppress(x509.ExtensionNotFound):
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise GenerationError(
                f"the signing certificate in {cert_path} is a CA: C2PA needs an end-entity certificate",
                code="provenance.bad_identity",
            )
    for ext, why in (
        (x509.AuthorityKeyIdentifier, "an authority key identifier"),
        (x509.ExtendedKeyUsage, "an extended key usage"),
    ):
        try:
            leaf.extensions.get_extension_for_class(ext)
        except x509.ExtensionNotFound:
            raise GenerationError(
                f"the signing certificate in {cert_path} has no {why}: C2PA's certificate profile requires one",
                code="provenance.bad_identity",
            ) from None
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise GenerationError(
            f"the signing certificate in {cert_path} is valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now",
            code="provenance.bad_identity",
        )
    roots = [c for c in certs[1:] if _self_signed(c)]
    chain = [leaf] + [c for c in certs[1:] if not _self_signed(c)]
    if roots:
        anchors = (anchors or b"") + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots)
    return Identity(
        cert_chain=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key=key_pem,
        alg=_alg(private_key),
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        trust_anchors=anchors,
        source=source,
        cert_path=cert_path,
    )


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _alg(private_key: Any) -> str:
    """The C2PA signing algorithm for a key: ES256/384/512 by curve, Ed25519, PS256 for RSA."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if private_key.curve.name in by_curve:
            return by_curve[private_key.curve.name]
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    elif isinstance(private_key, rsa.RSAPrivateKey):
        return "ps256"
    raise GenerationError(f"unsupported signing key type {type(private_key).__name__}", code="provenance.bad_identity")


# --- signing -------------------------------------------------------------------------------------------


def framebus_version() -> str:
    try:
        return version("framebus")
    except PackageNotFoundError:
        return "0"


def generation_claims(
    *,
    prompt: str,
    model: str,
    model_version: str,
    seed: int | None,
    steps: int | None,
    guidance: float | None,
    source_sha256: str | None = None,
    created: dt.datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``org.framebus.generation`` assertion of one job: the prompt only as its SHA-256 (the text
    stays private), the source clip's SHA-256, the model, sampling settings, the pipeline version and the
    creation time (UTC, ISO 8601). ``extra`` adds fields (job id, fps, ...)."""
    created = created or dt.datetime.now(dt.UTC)
    return {
        "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "source_sha256": source_sha256,
        "model": {"name": model, "version": model_version},
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "pipeline": f"framebus/{framebus_version()}",
        "created": created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def sign_mp4(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    manifest: dict[str, Any],
    identity: Identity,
    *,
    digital_source_type: str = TRAINED_ALGORITHMIC_MEDIA,
) -> dict[str, Any]:
    """Copy the MP4 ``src`` to ``dst`` (atomically; ``dst`` may be ``src``) with an embedded, signed C2PA
    manifest: the ``c2pa.created`` action of ``digital_source_type`` and the ``org.framebus.generation``
    assertion with ``manifest`` (a JSON object, e.g. ``generation_claims``).

    Returns ``{"c2pa": {"assertion", "claim_generator", "signer", "issuer", "alg", "sha256", "bytes",
    "manifest_bytes"}}`` (the signed file's hash and size). Raises ``GenerationError(provenance.sign_failed)``.
    """
    src, dst = Path(src), Path(dst)
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise GenerationError(f"the manifest is not a JSON object: {e}", code="provenance.sign_failed") from None
    fb_version = framebus_version()
    definition = {
        "claim_generator_info": [{"name": "framebus", "version": fb_version}],
        "title": dst.name,
        "format": "video/mp4",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": digital_source_type,
                            "softwareAgent": {"name": "framebus", "version": fb_version},
                        }
                    ]
                },
            },
            {"label": ASSERTION_LABEL, "data": manifest},
        ],
    }
    with atomic_path(dst, error_code="provenance.sign_failed") as tmp:
        try:
            info = c2pa.C2paSignerInfo(identity.alg, identity.cert_chain, identity.key, None)
            with c2pa.Signer.from_info(info) as signer, c2pa.Builder(definition) as builder:
                with open(src, "rb") as source, open(tmp, "w+b") as dest:
                    manifest_bytes = builder.sign(signer, "video/mp4", source, dest)
        except c2pa.C2paError as e:
            raise GenerationError(f"C2PA signing failed: {e}", code="provenance.sign_failed") from None
        digest, size = file_sha256(tmp)
    return {
        "c2pa": {
            "assertion": ASSERTION_LABEL,
            "claim_generator": f"framebus/{fb_version}",
            "signer": identity.subject,
            "issuer": identity.issuer,
            "alg": identity.alg,
            "sha256": digest,
            "bytes": size,
            "manifest_bytes": len(manifest_bytes),
        }
    }


# --- verification --------------------------------------------------------------------------------------


def verify(path: str | os.PathLike, *, trust_anchors: bytes | str | list[bytes | str] | None = None) -> VerifyResult:
    """Verify the C2PA manifest of the file at ``path`` (any format c2pa reads, detected from the name or
    the bytes). ``trust_anchors``: PEM root certificate(s) to trust (bytes or text, or a list of them);
    without any, a signer cannot be trusted and the result is never ``valid``.

    A file without a manifest gives ``signed=False``, ``state="NotSigned"``; one that c2pa cannot parse
    (e.g. a damaged box header) ``state="Unreadable"``; neither raises. Raises
    ``GenerationError(provenance.unreadable)`` when the file cannot be opened.
    """
    path = Path(path)
    anchors = _pem_text(trust_anchors)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise GenerationError(f"cannot read {path}: {e}", code="provenance.unreadable") from None
    settings: dict[str, Any] = {"verify": {"verify_trust": True}}
    if anchors:
        settings["trust"] = {"trust_anchors": anchors}
    try:
        with c2pa.Context.from_dict(settings) as context, c2pa.Reader(str(path), context=context) as reader:
            state = reader.get_validation_state() or "Invalid"
            results = reader.get_validation_results() or {}
            active = reader.get_active_manifest() or {}
            cr = json.loads(reader.crjson())
    except c2pa.C2paError.ManifestNotFound:
        return VerifyResult(
            path=str(path), signed=False, valid=False, altered=False, trusted=False, state="NotSigned",
            message="no C2PA manifest: the file is not signed",
        )  # fmt: skip
    except c2pa.C2paError as e:
        return VerifyResult(
            path=str(path), signed=False, valid=False, altered=False, trusted=False, state="Unreadable",
            message=f"c2pa cannot read the file: {e}",
        )  # fmt: skip

    statuses = results.get("activeManifest") or {}
    failures = [s["code"] for s in statuses.get("failure", [])]
    successes = [s["code"] for s in statuses.get("success", [])]
    altered = any(not code.startswith(_CREDENTIAL_CODES) for code in failures)
    trusted = "signingCredential.trusted" in successes
    valid = state == "Trusted" and not failures
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
    created = next((a for a in actions if a.get("action") == "c2pa.created"), {})
    generator = (active.get("claim_generator_info") or [{}])[0]
    if valid:
        message = "valid: intact, signed by a trusted signer"
    elif altered:
        message = "ALTERED: the file changed after it was signed"
    elif not trusted:
        message = "intact, but the signer is not trusted (no matching trust anchor)"
    else:
        message = f"invalid: {', '.join(failures) or state}"
    return VerifyResult(
        path=str(path),
        signed=True,
        valid=valid,
        altered=altered,
        trusted=trusted,
        state=state,
        signer=_signer(cr, active),
        claim_generator=f"{generator.get('name')}/{generator.get('version')}" if generator else None,
        digital_source_type=created.get("digitalSourceType"),
        claims=assertions.get(ASSERTION_LABEL),
        failures=failures,
        successes=successes,
        message=message,
    )


def _pem_text(anchors: bytes | str | list[bytes | str] | None) -> str | None:
    if anchors is None:
        return None
    items = anchors if isinstance(anchors, list) else [anchors]
    text = "".join(a.decode("ascii") if isinstance(a, bytes) else a for a in items if a)
    return text or None


def _signer(cr: dict[str, Any], active: dict[str, Any]) -> dict[str, Any] | None:
    """The active manifest's signing certificate from c2pa's crJSON (subject, issuer, serial), else the
    summary the manifest JSON carries."""
    label = active.get("label")
    for manifest in cr.get("manifests", []):
        if manifest.get("label") == label:
            sig = manifest.get("signature") or {}
            cert = sig.get("certificateInfo") or {}
            return {
                "subject": cert.get("subject"),
                "issuer": cert.get("issuer"),
                "serial": cert.get("serialNumber"),
                "alg": sig.get("algorithm"),
                "not_after": (cert.get("validity") or {}).get("notAfter"),
            }
    info = active.get("signature_info")
    return (
        {"subject": {"CN": info.get("common_name"), "O": info.get("issuer")}, "alg": info.get("alg")} if info else None
    )
