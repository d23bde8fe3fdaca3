"""prefkit's built-in method plugins, installed as `prefkit.plugins` and registered through the
`prefkit` entry-point group exactly as a third-party plugin is (see pyproject.toml)."""
