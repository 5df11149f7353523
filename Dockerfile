# gridpilot controller image: multi-stage, slim, non-root. Config and data are volumes.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY drivers ./drivers
RUN python -m venv /opt/gridpilot \
 && /opt/gridpilot/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gridpilot gridpilot \
 && mkdir -p /var/lib/gridpilot /etc/gridpilot \
 && chown gridpilot /var/lib/gridpilot
COPY --from=build /opt/gridpilot /opt/gridpilot
ENV PATH=/opt/gridpilot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/lib/gridpilot/numba-cache \
    GRIDPILOT_API_HOST=0.0.0.0 \
    GRIDPILOT_DATA_DIR=/var/lib/gridpilot \
    GRIDPILOT_API_TLS__AUTO_DIR=/var/lib/gridpilot/tls
USER 10001
VOLUME ["/var/lib/gridpilot", "/etc/gridpilot"]
EXPOSE 8080
# HTTPS by default (a site CA and certificate made at first start in /var/lib/gridpilot/tls;
# clients trust its ca.pem). TLS ending in a proxy in front: GRIDPILOT_API_TLS__ENABLED=false.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import os,ssl,sys,urllib.request as u; tls=os.environ.get('GRIDPILOT_API_TLS__ENABLED','true')!='false'; sys.exit(u.urlopen(('https' if tls else 'http')+'://127.0.0.1:8080/healthz', timeout=2, context=ssl._create_unverified_context() if tls else None).status != 200)"]
ENTRYPOINT ["gridpilot"]
CMD ["run", "--config", "/etc/gridpilot/site.yaml"]
