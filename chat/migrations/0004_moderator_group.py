"""The `moderator` group: staff in it review the moderation queue and read conversations
in the admin without being superusers. Ordinary staff get none of these permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "moderator"
# Frozen copy of chat.moderation.MODERATOR_PERMISSIONS at the time of this migration.
PERMISSIONS = [
    "view_conversation",
    "view_membership",
    "view_message",
    "view_moderationcase",
    "change_moderationcase",
    "view_moderationevent",
]


def create_group(apps, schema_editor):
    # Permissions are normally created after all migrations (post_migrate); create the
    # chat app's now so a fresh database gets a complete group.
    app_config = apps.get_app_config("chat")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="chat", codename__in=PERMISSIONS)
    )


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0003_moderation"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
