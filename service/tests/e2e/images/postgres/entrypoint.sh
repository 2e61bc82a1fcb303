#!/bin/sh
# What the official postgres image does with POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
mkdir -p "$PGDATA" /run/postgresql && chown postgres "$PGDATA" /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
    su postgres -s /bin/sh -c "$bin/initdb -D $PGDATA -U ${POSTGRES_USER:-postgres} --pwfile=/tmp/pw -A scram-sha-256" >/dev/null
    rm /tmp/pw
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D $PGDATA -w start -o '-c listen_addresses=' >/dev/null"
    PGPASSWORD=$POSTGRES_PASSWORD su postgres -s /bin/sh -c \
        "psql -h /run/postgresql -U ${POSTGRES_USER:-postgres} -d postgres -c 'CREATE DATABASE \"${POSTGRES_DB:-postgres}\"' >/dev/null"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D $PGDATA -w stop >/dev/null"
fi
exec su postgres -s /bin/sh -c "exec $bin/postgres -D $PGDATA -c listen_addresses='*' -c unix_socket_directories=/run/postgresql"
