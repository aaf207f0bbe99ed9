"""Sign-out and deactivation close the user's open sockets at once (4401)."""

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_save
from django.dispatch import receiver

from chat import fanout


@receiver(user_logged_out)
def close_sockets_of_session(sender, request, user, **kwargs) -> None:
    if user is not None and request is not None:
        async_to_sync(fanout.publish_signed_out)(user.pk, request.session.session_key)


@receiver(post_save, sender=get_user_model())
def close_sockets_of_deactivated_user(sender, instance, created, **kwargs) -> None:
    if not created and not instance.is_active:
        async_to_sync(fanout.publish_signed_out)(instance.pk, None)
