"""The model card templates (Jinja), installed as ``hf_recycle.model_cards``.

This folder is the one source of the templates: ``pyproject.toml`` maps the package
``hf_recycle.model_cards`` to it, so an editable install and a wheel both find them with
``importlib.resources``. ``README.md`` lists the variables a template is rendered with.
"""
