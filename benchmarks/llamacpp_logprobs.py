"""What logprobs cost on the llama.cpp engine: the worker's way (log-softmax of the sampled position's logits,
engines/llamacpp/logprobs.py) against no logprobs, and against llama-cpp-python's own way (a model loaded with
`logits_all=True`, which the worker never does).

Arms, each a whole answer of `--tokens` tokens at temperature 0 to the same ~300-token prompt, evaluated from
scratch every time (KV cache reset), on one thread:

    off        the worker's model, no logprobs asked (the baseline)
    ours-20    the worker's model, top_logprobs 20, tokens aligned and formatted as the worker does
    all-off    a logits_all model, no logprobs asked (what loading it that way costs every request)
    all-20     a logits_all model, llama-cpp-python's own logprobs=20

First, the logprobs work per token alone (`token_logprob` on real logits, top 0, 5 and 20, interleaved). Then
the arms run in rounds, in ABBA order (off, ours-20, all-off, all-20, then reversed), `--rounds` times; each
arm's median and range, and its ratio to `off` within each round (median and range), are printed.

Then scoring — what lm-eval's loglikelihood asks (`echo`, `logprobs: 1`, `max_tokens: 1`) — in rounds the same way:

    score-off   the worker's model, the prompt and one token, no logprobs (the baseline: one prefill)
    score-ours  the worker's model scoring the prompt (engines/llamacpp/worker.py `_score`: 64 positions a decode)
    score-all   a logits_all model, llama-cpp-python's own echo with logprobs=1 Peak memory
(RSS after, and peak) of a child process that loads the model and answers once, with and without `logits_all`,
is printed after. Run:

    .venv/bin/python benchmarks/llamacpp_logprobs.py [--rounds 6] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPT = ("Here is a short story about a lighthouse keeper who finds a message in a bottle. " * 18).strip() + "\nWhat happens next?"


def _models(n_ctx: int):
    import llama_cpp

    from switchboard.engines.llamacpp.paths import default_model_path
    from switchboard.engines.llamacpp.worker import _counting

    path = str(default_model_path())
    ours = _counting(llama_cpp.Llama)(model_path=path, n_ctx=n_ctx, n_threads=1, verbose=False)
    everything = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=1, logits_all=True, verbose=False)
    return ours, everything


def _answer(llm, num_tokens: int, arm: str) -> int:
    """One whole answer from scratch; returns the number of tokens with logprobs (0 when none were asked)."""
    from switchboard.engines.llamacpp.logprobs import Aligner, chat_logprobs

    llm.reset()
    if arm in ("off", "all-off"):
        llm.create_completion(PROMPT, max_tokens=num_tokens, temperature=0)
        return 0
    if arm == "all-20":
        out = llm.create_completion(PROMPT, max_tokens=num_tokens, temperature=0, logprobs=20)
        return len(out["choices"][0]["logprobs"]["tokens"])
    llm.num_top_logprobs, llm.sampled_logprobs = 20, []
    aligner, num = Aligner(llm.sampled_logprobs), 0
    try:
        for chunk in llm.create_completion(PROMPT, max_tokens=num_tokens, temperature=0, stream=True):
            num += len(chat_logprobs(aligner.take(chunk["choices"][0]["text"]))["content"])
        return num + len(aligner.rest())
    finally:
        llm.num_top_logprobs = None


def _score(llm, arm: str) -> int:
    """One scoring request from scratch (the prompt, one generated token); returns the prompt logprobs made."""
    llm.reset()
    if arm == "score-off":
        llm.create_completion(PROMPT, max_tokens=1, temperature=0)
        return 0
    if arm == "score-all":
        out = llm.create_completion(PROMPT, max_tokens=1, temperature=0, logprobs=1, echo=True)
        return len(out["choices"][0]["logprobs"]["tokens"])
    llm.num_top_prompt_logprobs = 1
    try:
        llm.create_completion(PROMPT, max_tokens=1, temperature=0)
        return len(llm.prompt_logprobs)
    finally:
        llm.num_top_prompt_logprobs = None


def _scoring(ours, everything, rounds: int) -> None:
    arms = {"score-off": ours, "score-ours": ours, "score-all": everything}
    for arm, llm in arms.items():
        _score(llm, arm)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    ratios: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(rounds):
        took = {}
        for arm in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            started = time.perf_counter()
            num = _score(arms[arm], arm)
            took[arm] = time.perf_counter() - started
            assert arm == "score-off" or num > 100, f"{arm} scored {num} tokens"
        for arm in arms:
            times[arm].append(took[arm])
            ratios[arm].append(took[arm] / took["score-off"])
    print(f"\nscoring (echo, logprobs 1, max_tokens 1), {rounds} ABBA rounds:")
    print(f"{'arm':<10} {'median s':>9} {'range s':>15} {'× score-off (median)':>21} {'range':>13}")
    for arm in arms:
        t, q = times[arm], ratios[arm]
        print(f"{arm:<10} {statistics.median(t):>9.3f} {min(t):>7.3f}-{max(t):<7.3f} {statistics.median(q):>21.3f} {min(q):>6.3f}-{max(q):<6.3f}")


def _per_token_cost(llm) -> None:
    """The worker's own work per token (engines/llamacpp/logprobs.py `token_logprob`) on real logits, for
    top_logprobs 0, 5 and 20, interleaved, 9 rounds of 200 calls each."""
    import numpy as np

    from switchboard.engines.llamacpp.logprobs import token_logprob

    llm.reset()
    llm.create_completion(PROMPT[:200], max_tokens=1, temperature=0)
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy()
    token = int(np.argmax(logits))
    per_call_ms: dict[int, list[float]] = {0: [], 5: [], 20: []}
    for _ in range(9):
        for num_top in per_call_ms:
            started = time.perf_counter()
            for _ in range(200):
                token_logprob(logits, token, num_top, llm.piece)
            per_call_ms[num_top].append((time.perf_counter() - started) / 200 * 1000)
    print("logprobs work per token: " + ", ".join(
        f"top {k}: {statistics.median(v):.3f} ms ({min(v):.3f}-{max(v):.3f})" for k, v in per_call_ms.items()))


def _peak_rss_child(logits_all: bool, n_ctx: int, num_tokens: int) -> None:
    import llama_cpp

    from switchboard.engines.llamacpp.paths import default_model_path

    llm = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=n_ctx, n_threads=1, logits_all=logits_all, verbose=False)
    llm.create_completion(PROMPT, max_tokens=num_tokens, temperature=0)
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    print(json.dumps({"rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--rss-child", choices=("plain", "logits_all"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _peak_rss_child(args.rss_child == "logits_all", args.n_ctx, args.tokens)
        return

    ours, everything = _models(args.n_ctx)
    _per_token_cost(ours)
    arms = {"off": ours, "ours-20": ours, "all-off": everything, "all-20": everything}
    for arm, llm in arms.items():  # warm-up: weights faulted in, compute graphs built
        _answer(llm, 4, arm)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    ratios: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        took = {}
        for arm in order:
            started = time.perf_counter()
            num = _answer(arms[arm], args.tokens, arm)
            took[arm] = time.perf_counter() - started
            if arm.endswith("-20"):
                assert num > 0, f"{arm} returned no logprobs"
        for arm in arms:
            times[arm].append(took[arm])
            ratios[arm].append(took[arm] / took["off"])
    print(f"llama.cpp logprobs: SmolLM2-135M Q4_1, 1 thread, ~{len(ours.tokenize(PROMPT.encode()))}-token prompt, {args.tokens} tokens, "
          f"{args.rounds} ABBA rounds, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'arm':<9} {'median s':>9} {'range s':>15} {'× off (median)':>15} {'range':>13}")
    for arm in arms:
        t, q = times[arm], ratios[arm]
        print(f"{arm:<9} {statistics.median(t):>9.3f} {min(t):>7.3f}-{max(t):<7.3f} {statistics.median(q):>15.3f} {min(q):>6.3f}-{max(q):<6.3f}")
    _scoring(ours, everything, args.rounds)
    print(f"logits_all keeps {everything.scores.nbytes / 2**20:.0f} MB of scores (n_ctx {args.n_ctx} × {everything.n_vocab()} × 4 B); "
          f"the worker's model {ours.scores.nbytes / 2**20:.0f} MB allocated, never written")
    ours.close()
    everything.close()
    for mode in ("plain", "logits_all"):
        done = subprocess.run([sys.executable, __file__, "--rss-child", mode, "--n-ctx", str(args.n_ctx), "--tokens", str(args.tokens)],
                              capture_output=True, text=True, check=True)
        rss = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"memory after one answer, {mode:<10}: RSS {rss['rss_mb']:.0f} MB (peak {rss['max_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
