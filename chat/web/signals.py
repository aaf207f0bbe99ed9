"""Sign-out, a password change, deactivation and deletion close the user's open sockets
and event streams at once (4401); every later frame is refused anyway (the session is
checked against the user's current password on each one)."""

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from chat.fanout import publish as fanout

User = get_user_model()


def _sign_out_everywhere(user_id: int) -> None:
    # After the commit: a socket that re-checks its session must see the new password.
    transaction.on_commit(lambda: async_to_sync(fanout.publish_signed_out)(user_id, None))


@receiver(user_logged_out)
def close_sockets_of_session(sender, request, user, **kwargs) -> None:
    if user is not None and request is not None:
        async_to_sync(fanout.publish_signed_out)(user.pk, request.session.session_key)


@receiver(pre_save, sender=User)
def note_a_password_change(sender, instance, update_fields=None, **kwargs) -> None:
    # `set_password` keeps the raw password until `save()` has run the password-changed
    # hooks: its presence means this save changes the password.
    instance._livechat_password_changed = (
        instance.pk is not None and getattr(instance, "_password", None) is not None
    )


@receiver(post_save, sender=User)
def close_sockets_after_a_change(sender, instance, created, **kwargs) -> None:
    if created:
        return
    if not instance.is_active or getattr(instance, "_livechat_password_changed", False):
        _sign_out_everywhere(instance.pk)


@receiver(post_delete, sender=User)
def close_sockets_of_a_deleted_user(sender, instance, **kwargs) -> None:
    _sign_out_everywhere(instance.pk)
