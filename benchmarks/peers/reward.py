"""The rule reward both sides train on: distinct words in the response, capped at 16, over 16.

Plain Python with no imports, so it runs in a peer's virtualenv as it does in rayrlhf's."""


def reward(prompt: str, response: str) -> float:
    return min(len(set(response.split())), 16) / 16.0
