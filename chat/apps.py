from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the /metrics gauges and connects the session signals' receivers.
        from chat.lifecycle import gauges  # noqa: F401
        from chat.web import signals  # noqa: F401
