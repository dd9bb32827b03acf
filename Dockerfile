FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# The flower extra: the docker-compose `flower` service runs `celery -A worker flower`.
RUN pip install --no-cache-dir ".[flower]" && useradd --system jobtracker
USER jobtracker
CMD ["jobtracker", "run"]
