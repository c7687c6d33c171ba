"""The eval compile tool, for real: libtpu compiles the eval service's scoring and
generation for a TPU topology on this CPU host, and picks the batch that fits."""

from libs.tpu import testing


def _compile(*flags):
    return testing.run_compile_tool("services.eval.compile_main", *flags)


def test_tiny_scoring_and_generation_fit_a_small_slice():
    rc, figures, out = _compile(
        "--preset=tiny",
        "--topology=v5e-4",
        "--prompt_len=128",
        "--new_tokens=64",
        "--max_batch=16",
    )
    assert rc == 0, out
    assert figures["fits"] and figures["attention"] == "splash"
    assert figures["devices"] == 4 and figures["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert figures["hbm_bytes_per_chip"] == int(15.75 * 2**30)
    for program in ("scoring", "generation"):
        part = figures[program]
        # Doubled from one row a chip up to the cap, which a tiny model reaches.
        assert part["batch"] == 16 and part["fits"], program
        assert 0 < part["bytes_per_chip"] < figures["hbm_bytes_per_chip"]
    assert figures["batch_size"] == 16
    assert "scoring    batch 16 (4 a chip)" in out
