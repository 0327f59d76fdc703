#!/bin/sh
# Build deploy/Dockerfile and serve one query through the container: PostgreSQL and
# the pooler in containers on a private network, psql through the pooler. Needs a
# running Docker engine; exits 0 when "select 40 + 2" comes back as 42.
set -eu
cd "$(dirname "$0")/.."
tag=${PGSANSIO_IMAGE:-pgsansio:check}
postgres=${POSTGRES_IMAGE:-postgres:16}
name=pgsansio-check-$$
work=$(mktemp -d)
cleanup() {
    docker rm -f "$name-pg" "$name-pooler" >/dev/null 2>&1 || true
    docker network rm "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

docker build -f deploy/Dockerfile -t "$tag" .
docker network create "$name" >/dev/null
docker run -d --name "$name-pg" --network "$name" -e POSTGRES_PASSWORD=secret "$postgres" >/dev/null
cat >"$work/pgcat.toml" <<TOML
[general]
host = "0.0.0.0"
port = 6432
admin_username = "admin"
admin_password = "admin"

[pools.postgres.users.0]
username = "postgres"
password = "secret"
pool_size = 2

[pools.postgres.shards.0]
database = "postgres"
servers = [["$name-pg", 5432, "primary"]]
TOML
chmod 755 "$work"
chmod 644 "$work/pgcat.toml"
docker run -d --name "$name-pooler" --network "$name" \
    -v "$work/pgcat.toml:/etc/pgsansio/pgcat.toml:ro" "$tag" >/dev/null

i=0
while [ $i -lt 60 ]; do
    got=$(docker run --rm --network "$name" -e PGPASSWORD=secret "$postgres" \
        psql -h "$name-pooler" -p 6432 -U postgres -d postgres -tAc 'select 40 + 2' 2>/dev/null || true)
    if [ "$got" = "42" ]; then
        echo "docker-check: OK, the container served a query (pgsansio $(docker run --rm --entrypoint pgsansio "$tag" --version | head -1))"
        exit 0
    fi
    i=$((i + 1))
    sleep 1
done
echo "docker-check: no answer through the pooler within 60 s; its log:" >&2
docker logs "$name-pooler" >&2
exit 1
