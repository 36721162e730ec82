# /etc/tongban/gunicorn.conf.py: the gateway's gunicorn configuration, read by
# tongban-gateway.service (gunicorn -c /etc/tongban/gunicorn.conf.py).
#
# Everything tongban needs comes from tongban.gunicorn_conf: the deadline worker and its
# threads, the masked access log, the error log at info (tongban.* records included), and
# the Prometheus multiprocess hooks (with more than one worker the master prepares
# <data dir>/run/metrics-<master pid>, mode 0700, so /metrics counts every worker).
# This file adds only what belongs to this host. Options given on gunicorn's command
# line override it.
from tongban.gunicorn_conf import *  # noqa: F403

wsgi_app = "tongban.wsgi:gateway()"
bind = ["0.0.0.0:443"]
# Workers share the gateway store and the audit log in PostgreSQL (docs/operations.md,
# "Production topology"); /metrics answers the sum over all of them.
workers = 2
# HTTPS with the gateway's certificate of the deployment PKI (docs/transport.md).
certfile = "/srv/tongban/pki/gateway.pem"
keyfile = "/srv/tongban/pki/gateway.key"
