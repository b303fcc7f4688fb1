#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1 (the test configuration); start the machine's
# own servers when they are down, and fail (never skip) when they still do not answer.
set -u
PGHOST=${PGHOST:-127.0.0.1}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}

pg_up() { pg_isready -q -h "$PGHOST" -p 5432 -t 2; }
redis_up() { redis-cli -h "$REDIS_HOST" -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  echo "PostgreSQL is down; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi
if ! redis_up; then
  echo "Redis is down; starting it"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 30); do redis_up && break; sleep 1; done
fi
# RabbitMQ: the alternative broker (CELERY_BROKER_URL=amqp://…). Started when installed and down; only
# fatal when REQUIRE_RABBITMQ=1, which make test, chaos and bench set (their RabbitMQ tests fail without it).
RABBITMQ_HOST=${RABBITMQ_HOST:-127.0.0.1}
rabbit_up() { (exec 3<>"/dev/tcp/$RABBITMQ_HOST/5672") 2>/dev/null; }
if command -v rabbitmq-server >/dev/null && ! rabbit_up; then
  echo "RabbitMQ is down; starting it"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 60); do rabbit_up && break; sleep 1; done
fi
if rabbit_up; then
  echo "RabbitMQ is up"
elif [ "${REQUIRE_RABBITMQ:-0}" = 1 ]; then
  echo "FATAL: RabbitMQ is not reachable on $RABBITMQ_HOST:5672" >&2; exit 1
else
  echo "RabbitMQ is not available (make test, chaos and bench need it)"
fi
pg_up || { echo "FATAL: PostgreSQL is not reachable on $PGHOST:5432" >&2; exit 1; }
redis_up || { echo "FATAL: Redis is not reachable on $REDIS_HOST:6379" >&2; exit 1; }
echo "PostgreSQL and Redis are up"
