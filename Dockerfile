FROM python:3.12-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# The installed package root: its models/ and migrations/ are symlinks to the two folders above.
COPY jobtracker ./jobtracker
# The flower extra: the docker-compose `flower` service runs `celery -A worker flower`.
# The service user gets a home of its own: the embedded defaults (./jobtracker.db and the
# ./.jobtracker-broker folder) are written to the working directory, which must be writable.
RUN pip install --no-cache-dir ".[flower]" \
    && useradd --system --create-home --home-dir /var/lib/jobtracker jobtracker
WORKDIR /var/lib/jobtracker
USER jobtracker
CMD ["jobtracker", "run"]
