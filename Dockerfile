FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system jobtracker
USER jobtracker
CMD ["jobtracker", "run"]
