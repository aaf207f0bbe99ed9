from django.contrib import admin
from django.urls import include, path

from chat.web import accounts, login

urlpatterns = [
    # Before the admin's own routes: its sign-in page under the attempt limit.
    path("admin/login/", login.admin_login),
    path("admin/", admin.site.urls),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("accounts/login/", login.RateLimitedLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("chat.urls")),
]
