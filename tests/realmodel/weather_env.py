"""A one-tool environment for tool rollouts against the real server: `get_weather(city)`, which remembers the cities
asked for; the reward is 1 when the row's `city` was asked for. Loaded with `--env-module tests.realmodel.weather_env`.
"""

from __future__ import annotations

from pydantic import BaseModel

from rollouts.envs import ToolEnvironment


class Asked(BaseModel):
    cities: list[str] = []


env = ToolEnvironment("weather", state=Asked)


@env.tool
def get_weather(state: Asked, city: str) -> str:
    """Current weather in a city.

    Args:
        city: the city's name.
    """
    state.cities.append(city)
    return f"sunny, 21 C in {city}"


@env.verifier
def asked_for_the_city(row: dict, response: dict, state: Asked) -> float:
    return float(row["city"] in state.cities)
