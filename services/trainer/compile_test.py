"""The ahead-of-time compile tool, for real: libtpu compiles the trainer's step for TPU
topologies on this CPU host (splash attention included), and says whether it fits."""

import os

import pytest

from libs.tpu import testing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _compile(*flags):
    return testing.run_compile_tool("services.trainer.compile_main", *flags)


def test_tiny_fits_a_small_slice_with_splash_attention():
    rc, figures, out = _compile(
        "--preset=tiny", "--topology=v5e-4", "--global_batch_size=8", "--seq_len=512"
    )
    assert rc == 0, out
    assert figures["fits"] and figures["attention"] == "splash"
    assert figures["devices"] == 4 and figures["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    # libtpu's own figure for a v5e chip, and a step that needs something but not all of it.
    assert figures["hbm_bytes_per_chip"] == int(15.75 * 2**30)
    assert 0 < figures["bytes_per_chip"] < figures["hbm_bytes_per_chip"]
    assert figures["flops_per_step"] > 0
    assert "per chip   arguments" in out


def test_a_step_that_does_not_fit_exits_non_zero():
    """Thousands of 8k sequences a chip with every activation kept: libtpu refuses it."""
    rc, figures, out = _compile(
        "--preset=tiny",
        "--topology=v5e-4",
        "--global_batch_size=4096",
        "--seq_len=8192",
        "--remat=none",
    )
    assert rc == 1, out
    assert not figures["fits"]
    assert figures["bytes_per_chip"] > figures["hbm_bytes_per_chip"]


@pytest.mark.parametrize("spec,topology", [("470m", "v5e-16"), ("2.8b", "v5e-64")])
def test_the_paper_scale_study_specs_fit_their_slices_with_headroom(spec, topology):
    """Each paper-scale study as written (mesh, microbatches, remat), 512 x 8192."""
    rc, figures, out = _compile(
        f"--spec={os.path.join(REPO, 'studies', 'specs', spec + '.textproto')}",
        f"--topology={topology}",
        "--min_headroom=0.1",
    )
    assert rc == 0, out
    assert figures["global_batch_size"] == 512 and figures["seq_len"] == 8192
    assert figures["headroom"] >= 0.1


def test_the_trainer_compiles_its_start_up_for_a_topology():
    """`--compile_only`: the trainer's own start-up (its RunSpec, the mesh of the topology's
    devices, sharded initialisation, the step) compiled for v5e-4, with the tool's report."""
    rc, figures, out = testing.run_compile_tool(
        "services.trainer.api.main", "--compile_only", "--topology=v5e-4"
    )
    assert rc == 0, out
    assert figures["fits"] and figures["preset"] == "tiny" and figures["devices"] == 4
    assert "startup    parameters:" in out and "startup    optimizer:" in out
