"""Prints the preset table: shape, parameter count and training FLOPs per token.

bazel run //libs/model:presets -- --seq_len=8192
"""

from absl import app, flags

from libs.model import flops, model, presets

FLAGS = flags.FLAGS
flags.DEFINE_integer("seq_len", 0, "Sequence length for FLOPs per token (0: each max_seq_len).")


def table(seq_len: int = 0) -> str:
    header = (
        f"{'preset':<7} {'layers':>6} {'d_model':>7} {'d_ff':>6} {'heads':>5} "
        f"{'vocab':>7} {'tied':>5} {'params':>14} {'seq':>5} {'train FLOPs/token':>18}"
    )
    lines = [header]
    for name, cfg in presets.PRESETS.items():
        seq = seq_len or cfg.max_seq_len
        lines.append(
            f"{name:<7} {cfg.num_layers:>6} {cfg.d_model:>7} {cfg.d_ff:>6} {cfg.num_heads:>5} "
            f"{cfg.vocab_size:>7} {str(cfg.tie_embeddings):>5} {model.param_count(cfg):>14,} "
            f"{seq:>5} {flops.flops_per_token(cfg, seq):>18.4g}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    print(table(FLAGS.seq_len))


if __name__ == "__main__":
    app.run(main)
