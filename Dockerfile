# One image for every Pond component; each Deployment picks its command
# (e.g. `python -m services.member`, `python -m gateway`). Non-root, read-only root filesystem friendly.
FROM python:3.11-slim AS build
WORKDIR /app
COPY pyproject.toml ./
COPY services ./services
COPY gateway ./gateway
COPY stack ./stack
COPY protos ./protos
RUN pip install --no-cache-dir --prefix=/install . \
 && pip install --no-cache-dir grpcio-tools==1.85.1 \
 && mkdir gen && python -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen \
      --grpc_python_out=gen $(find protos -name '*.proto')

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app:/app/gen \
    POND_LOG_FORMAT=json POND_DATA_DIR=/tmp/pond
COPY --from=build /install /usr/local
COPY --from=build /app/gen /app/gen
COPY services /app/services
COPY gateway /app/gateway
COPY stack /app/stack
WORKDIR /app
USER 65532:65532
EXPOSE 50051 9101 8080
CMD ["python", "-m", "services.member"]
