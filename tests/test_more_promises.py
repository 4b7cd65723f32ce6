"""Three README promises checked against the real thing, each by a test that fails when it breaks.

- "Production shape": clients reach a TLS-only Redis with ``rediss://`` and redis-py's query options
  (``ssl_cert_reqs=required&ssl_ca_certs=…``): a real fit's events travel over verified TLS, and a
  client (the publisher included) that does not trust the server's CA is refused.
- "Promote models": a checkpoint whose sha256 no longer matches its ``checkpoint_saved`` event is
  passed over, and the next best candidate is promoted, with its own epoch and value.
- "Query history": each row of ``epochs`` holds the steps Keras ran (ceil(samples / batch_size)) and
  rates that agree with them, with the batch size and with the epoch's ``wall_time_s``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.model_registry import describe, list_versions
from pipeline.store import open_store
from tests.conftest import free_port, wait_for
from tests.test_promotion import _keras_file
from tests.test_promotion_promises import RunningPromoter, _drained, _outcome
from tests.training_helpers import sha256, small_digits, small_model

# -- TLS to Redis ---------------------------------------------------------------------------------

_SERVER_EXTENSIONS = """\
subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command is not installed; this test makes its certificates with it")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")


def _certificate_authority(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return directory / "ca.crt", directory / "ca.key"


def _server_certificate(directory: Path, ca_cert: Path, ca_key: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost, signed by the CA."""
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS)
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        cwd=directory,
    )
    return directory / "server.crt", directory / "server.key"


def _rediss_url(port: int, ca_cert: Path) -> str:
    """The README's form: ``rediss://host:port/0?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.crt``."""
    return f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca_cert), safe='/')}"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping())
    except redis.RedisError:
        return False


class TlsRedis:
    """A redis-server of the test's own that speaks only TLS, configured as the README says:
    ``port 0``, ``tls-port``, ``tls-cert-file``, ``tls-key-file``, ``tls-ca-cert-file``,
    ``tls-auth-clients no``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_cert, ca_key = _certificate_authority(directory / "ca", "Fitstream test CA")
        self.cert, self.key = _server_certificate(directory, self.ca_cert, ca_key)
        self.port = free_port()
        self.url = _rediss_url(self.port, self.ca_cert)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; ./dev test installs it")
        config = self.dir / "redis.conf"
        config.write_text(
            f"port 0\ntls-port {self.port}\nbind 127.0.0.1\n"
            f"tls-cert-file {self.cert}\ntls-key-file {self.key}\ntls-ca-cert-file {self.ca_cert}\n"
            f'tls-auth-clients no\nsave ""\nappendonly no\ndir {self.dir}\n'
        )
        log_path = self.dir / "redis.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                # A redis-server built without TLS refuses the tls-* directives and exits. CI must not skip
                # this silently: the README's TLS advice would go untested.
                output = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(
                    f"{binary} could not start serving TLS (it exited with {self.proc.returncode}); a build "
                    f"without TLS support cannot (Debian's redis-server has it). Its output:\n{output}"
                )
            return _answers(self.url)

        wait_for(up, timeout=15, message=f"TLS-only redis-server on port {self.port} (log: {log_path})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path / "tls-redis")
    server.start()
    yield server
    server.stop()


def _tiny_fit(publisher: EventPublisher, *, samples: int = 64, epochs: int = 1, batch_size: int = 32) -> None:
    (x, y), (x_val, y_val) = small_digits(samples)
    small_model().fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=[publisher],
    )


def test_a_fit_publishes_over_verified_tls_and_an_untrusted_ca_is_refused(
    tls_redis,
    tmp_path,
    redis_url,
    stream_name,
):
    # The settings name the suite's plain Redis; only the publisher's redis_url names the TLS one, so events
    # read back from the TLS server can only have come through the rediss:// URL.
    settings = Settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        home=tmp_path / "home",
        stream=stream_name,
    )
    publisher = EventPublisher(name="tls-run", redis_url=tls_redis.url, settings=settings)
    _tiny_fit(publisher)

    report = publisher.last_report
    assert report is not None and report.complete, report
    over_tls = redis.Redis.from_url(tls_redis.url)
    published = [ev.decode(fields) for _id, fields in over_tls.xrange(stream_name)]
    assert len(published) == report.sent
    assert {e.run_id for e in published} == {publisher.run_id}
    types = [e.type for e in published]
    assert types[0] == "run_started" and types[-1] == "run_finished" and types.count("epoch_end") == 1, types
    assert not redis.Redis.from_url(redis_url).exists(stream_name), "events went to the settings' plain Redis"
    # The server speaks nothing but TLS: a plain client on its port gets no answer.
    assert not _answers(f"redis://127.0.0.1:{tls_redis.port}/0")

    # A CA that did not sign the server's certificate: the handshake is refused.
    other_ca, _key = _certificate_authority(tmp_path / "other-ca", "Some other CA")
    untrusting = _rediss_url(tls_redis.port, other_ca)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(untrusting, socket_connect_timeout=2).ping()
    # And so is the publisher's own connection: its events stay in its disk spool, none reach the server.
    refused = EventPublisher(name="tls-untrusted", redis_url=untrusting, settings=settings, flush_timeout=1.0)
    _tiny_fit(refused)
    assert refused.last_report is not None and refused.last_report.sent == 0
    assert refused.last_report.left_in_spool > 0 and refused.last_report.spool_path.exists()
    assert {ev.decode(f).run_id for _id, f in over_tls.xrange(stream_name)} == {publisher.run_id}


# -- Promotion: a checkpoint changed after its event gives way to the next best -------------------


def test_a_checkpoint_changed_after_its_event_gives_way_to_the_next_best(settings, engine, tmp_path):
    run_id, name = "tampered-run", "tampered-model"
    # val_loss per epoch (mode min): epoch 2 is best, epoch 1 next best. The next best is neither the
    # first nor the last intact file, nor the best by the wrong direction, so only the README's rule finds it.
    values = {0: 0.50, 1: 0.30, 2: 0.20, 3: 0.60}
    paths = {epoch: tmp_path / f"ckpt-{epoch:02d}.keras" for epoch in values}
    shas = {epoch: _keras_file(paths[epoch], seed=epoch) for epoch in values}
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    stream.publish(
        [ev.build(ev.RunStarted, run_id=run_id, seq=0, name=name, monitor="val_loss", mode="min")]
        + [
            ev.build(
                ev.CheckpointSaved,
                run_id=run_id,
                seq=1 + epoch,
                path=str(paths[epoch]),
                epoch=epoch,
                monitor="val_loss",
                mode="min",
                value=value,
                sha256=shas[epoch],
            )
            for epoch, value in values.items()
        ]
        + [
            ev.build(
                ev.EarlyStopped,
                run_id=run_id,
                seq=10,
                stopped_epoch=3,
                best_epoch=2,
                best_value=0.20,
                monitor="val_loss",
                mode="min",
            )
        ]
    )
    # After its event, the best file is overwritten by another (valid, loadable) Keras model.
    _keras_file(paths[2], seed=99)
    assert sha256(paths[2]) != shas[2]

    with RunningPromoter(settings, engine, open_store(settings.model_store_url)) as running:
        [outcome] = _outcome(settings, run_id)
        wait_for(lambda: _drained(stream), message="the promoter to consume everything")
        assert running.loop.stats.dead_lettered == 0

    assert outcome.type == "model_promoted", outcome
    assert (outcome.name, outcome.version, outcome.epoch, outcome.metric, outcome.value) == (
        name,
        1,
        1,
        "val_loss",
        0.30,
    )
    info = describe(engine, f"{name}@champion")
    assert (info["run_id"], info["epoch"], info["value"], info["sha256"]) == (run_id, 1, 0.30, shas[1])
    assert info["source_path"] == str(paths[1])
    assert [v["version"] for v in list_versions(engine, name)] == [1]
    store = open_store(settings.model_store_url)
    assert store.versions(name) == [1]
    stored = store.get(name, 1)
    assert (stored.sha256, stored.metadata["epoch"], stored.metadata["value"]) == (shas[1], 1, 0.30)
    (tmp_path / "fetched").mkdir()
    assert sha256(store.local_copy(name, 1, str(tmp_path / "fetched"))) == shas[1]


# -- The epochs table: steps and rates of a real fit ----------------------------------------------


def test_epochs_rows_hold_the_fits_steps_and_rates_that_agree_with_them(settings, engine, recorder):
    samples, batch_size, epochs = 600, 32, 2
    assert samples % batch_size, "a partial last batch is what ceil() is about"
    publisher = EventPublisher(name="epochs-table", settings=settings, batch_size=batch_size)
    started = time.monotonic()
    _tiny_fit(publisher, samples=samples, epochs=epochs, batch_size=batch_size)
    fit_seconds = time.monotonic() - started

    def recorded() -> list[sa.Row]:
        with engine.connect() as conn:
            run = {"r": publisher.run_id}
            status = conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), run).scalar()
            rows = conn.execute(
                sa.text(
                    "SELECT epoch, steps, wall_time_s, samples_per_second, steps_per_second FROM epochs "
                    "WHERE run_id = :r ORDER BY epoch"
                ),
                run,
            ).all()
        return rows if status == "completed" and len(rows) == epochs else []

    rows = wait_for(recorded, message="the recorder to record both epochs and the run's end")
    steps = math.ceil(samples / batch_size)
    assert steps == 19
    assert [row.epoch for row in rows] == list(range(epochs))
    for row in rows:
        assert row.steps == steps, row
        assert row.wall_time_s > 0, row
        assert row.steps_per_second == pytest.approx(steps / row.wall_time_s, rel=1e-9), row
        # What the publisher can know: Keras tells callbacks the steps, not the samples, so samples/s is
        # steps × batch_size / wall time — the samples plus the unfilled rest of the last batch.
        assert row.samples_per_second == pytest.approx(steps * batch_size / row.wall_time_s, rel=1e-9), row
        assert samples / row.wall_time_s <= row.samples_per_second < (samples + batch_size) / row.wall_time_s
    # The wall times the rates are built on are seconds spent inside this fit (not milliseconds, say).
    assert sum(row.wall_time_s for row in rows) <= fit_seconds
