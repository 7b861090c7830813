"""How many prompt tokens llama-cpp-python takes from its KV cache (`Llama.generate`'s prefix reuse)."""

from switchboard.engines.llamacpp.worker import _num_cached_prompt_tokens


def test_common_prefix_with_the_previous_context_is_cached():
    assert _num_cached_prompt_tokens([1, 2, 3, 9, 9, 7], [1, 2, 3, 4, 5]) == 3
    assert _num_cached_prompt_tokens([], [1, 2, 3]) == 0
    assert _num_cached_prompt_tokens([5, 2], [1, 2, 3]) == 0


def test_a_fully_matched_prompt_re_evaluates_its_last_token_unless_the_context_is_exactly_it():
    assert _num_cached_prompt_tokens([1, 2, 3, 4, 8, 8], [1, 2, 3, 4]) == 3  # prompt + old answer in the cache
    assert _num_cached_prompt_tokens([1, 2, 3, 4], [1, 2, 3, 4]) == 4
