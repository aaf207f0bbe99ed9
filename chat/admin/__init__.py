"""Staff admin (DESIGN section 8, docs/moderation.md): the moderation review queue,
read-only conversation review with CSV export, the privacy access log and a usage page.

Django's admin autodiscovery imports this package, which imports the modules that
register the ModelAdmins and sets the site's sign-in form. Model output and user text
reach the page only through Django's autoescaping (templates and `format_html`); nothing
in this package marks text safe.
"""

from django.contrib import admin

from chat.admin import access, cases, conversations, messages  # noqa: F401 (registration)
from chat.web import login

# The admin's sign-in form counts and refuses like the page's (chat/web/login.py).
admin.site.login_form = login.LimitedAdminAuthenticationForm
