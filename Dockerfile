# Livechat: one daphne process per container. Migrations are not run here: run
# `python manage.py migrate --noinput` once per deployment (docker-compose.yml does).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (their own layer, rebuilt only when the lock changes), exactly as
# pinned and hashed.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY . .

# settings.py refuses to load without a secret key; this one exists only for this RUN
# and is never part of the image's environment.
RUN DJANGO_SECRET_KEY=collectstatic-build-only python manage.py collectstatic --noinput

# The code stays root-owned and read-only for the process that serves it.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app \
    # ...except the collected static files, which a deployment may refresh into a
    # volume it shares with nginx (docker-compose.yml's `migrate` does).
    && chown -R app:app /app/staticfiles
USER app

EXPOSE 8000

# /healthz answers 200 only when the database and the channel layer do (503 otherwise,
# which urlopen raises on). The Host header 127.0.0.1 must be in DJANGO_ALLOWED_HOSTS.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# daphne with the websocket limits of the settings (chat/management/commands/serve.py);
# -v 0: no per-request access lines (nginx logs requests); app logs stay JSON lines.
CMD ["python", "manage.py", "serve", "-v", "0", "-b", "0.0.0.0", "-p", "8000"]
