from django.apps import AppConfig


class ReservasConfig(AppConfig):
    name = "reservas"

    def ready(self) -> None:
        # Connects the post_save handlers that publish to wshub.
        from . import signals  # noqa: F401
