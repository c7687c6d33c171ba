"""Auth end to end: a data service that requires a bearer token over TLS.

The data service runs as a process with --auth_token_file and
--tls_cert/--tls_key (a self-signed certificate made here). A trainer
service given the token and the CA trains a run from it; one given only the
CA is refused at StartRun with UNAUTHENTICATED and a message that says which
flag it lacks; the study runner's own data calls carry the token too.
"""

import datetime
import os

import grpc
import pytest

from libs.serving import process
from libs.serving.credentials import ClientCredentials
from proto import data_pb2, trainer_pb2, trainer_pb2_grpc
from services.data.api import client as data_client
from services.data.api import testing as data_testing
from studies.service_processes import Services

S = trainer_pb2.LRSchedule
TOKEN = "s3cret-token"


def _self_signed(directory) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    cert, key = _self_signed(str(root))
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    corpus = data_testing.build_small_corpus(str(root / "data"))
    data = data_client.start_local_server(
        corpus.path,
        build_default_corpus=False,
        auth_token_file=str(token_file),
        extra_args=[f"--tls_cert={cert}", f"--tls_key={key}"],
    )
    try:
        yield {"address": data.address, "ca": cert, "token_file": str(token_file), "root": root}
    finally:
        data.stop()


def _spec(data_address: str, checkpoint_dir: str) -> trainer_pb2.RunSpec:
    mixture = data_pb2.MixtureSpec(
        stages=[data_pb2.MixtureStage(weights=[data_pb2.SourceWeight(source="text", weight=1)])]
    )
    return trainer_pb2.RunSpec(
        run_id="authed",
        preset="tiny",
        data_address=data_address,
        global_batch_size=2,
        seq_len=32,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_steps=100,
        phases=[
            trainer_pb2.Phase(
                name="pretrain",
                from_scratch=True,
                token_budget=3 * 2 * 32,
                mixture=mixture,
                schedule=S(kind=S.CONSTANT, peak_lr=1e-3),
            )
        ],
    )


def test_a_trainer_with_the_token_trains_and_one_without_is_unauthenticated(secured):
    trainer_main = process.module_command("services.trainer.api.main") + ["--serve"]
    with_token = process.start(
        trainer_main
        + [f"--data_tls_ca={secured['ca']}", f"--data_auth_token_file={secured['token_file']}"]
    )
    without = process.start(trainer_main + [f"--data_tls_ca={secured['ca']}"])
    try:
        spec = _spec(secured["address"], str(secured["root"] / "checkpoints"))
        with grpc.insecure_channel(without.address) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.StartRun(trainer_pb2.StartRunRequest(spec=spec), timeout=120)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = refused.value.details()
        assert details.startswith("UNAUTHENTICATED: the data service at " + secured["address"])
        assert "--data_auth_token_file" in details

        with grpc.insecure_channel(with_token.address) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            stub.StartRun(trainer_pb2.StartRunRequest(spec=spec), timeout=120)
            events = list(stub.WatchRun(trainer_pb2.WatchRunRequest(run_id="authed"), timeout=300))
        statuses = [e.status for e in events if e.WhichOneof("event") == "status"]
        assert statuses[-1].state == trainer_pb2.SUCCEEDED, statuses[-1]
        assert statuses[-1].step == 3
    finally:
        with_token.stop()
        without.stop()


def test_the_runner_sends_the_token_to_the_data_service(secured, tmp_path):
    roots = open(secured["ca"], "rb").read()
    good = Services(
        str(tmp_path),
        addresses={"data": secured["address"]},
        data_credentials=ClientCredentials(token=TOKEN, root_certificates=roots),
    )
    bad = Services(
        str(tmp_path),
        addresses={"data": secured["address"]},
        data_credentials=ClientCredentials(root_certificates=roots),
    )
    try:
        assert good.source_kinds()["text"] == "text"
        with pytest.raises(grpc.RpcError) as refused:
            bad.source_kinds()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        good.close()
        bad.close()
