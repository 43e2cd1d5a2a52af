# A throwaway PostgreSQL server on loopback for the distributed-search tests. Source it, then:
#   postgres_start   # installs PostgreSQL from the system's packages when missing (root), starts a server on a free
#                    # port, exports AUTOTUNE_TEST_POSTGRES_URL (with a random password), and its data folder and
#                    # binaries (AUTOTUNE_TEST_POSTGRES_DATA, _BIN) for the test that restarts it
#   postgres_stop    # stops it and deletes its data
# The server runs as the `postgres` system user when called as root (PostgreSQL refuses to run as root).

postgres_start() {
    if [ "$(id -u)" = 0 ]; then
        # A fresh container has no package lists; the lock timeout waits out another apt run instead of failing.
        apt-get -qq -o DPkg::Lock::Timeout=300 update
        DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300 install -y postgresql >/dev/null
    fi
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ]; then
        echo "postgres_start: PostgreSQL is not installed; run as root, or: apt-get install postgresql" >&2
        return 1
    fi
    local run_as=()
    [ "$(id -u)" = 0 ] && run_as=(runuser -u postgres --)
    POSTGRES_DIR=$(mktemp -d /tmp/autotune-postgres.XXXXXX)
    POSTGRES_BIN=$bin
    POSTGRES_RUN_AS=("${run_as[@]}")
    local password port
    password=$(python3 -c "import secrets; print(secrets.token_hex(12))")
    port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    printf '%s\n' "$password" >"$POSTGRES_DIR/pwfile"
    [ "$(id -u)" = 0 ] && chown -R postgres "$POSTGRES_DIR"
    "${run_as[@]}" "$bin/initdb" -D "$POSTGRES_DIR/data" -U autotune --pwfile="$POSTGRES_DIR/pwfile" \
        --auth=scram-sha-256 >"$POSTGRES_DIR/initdb.log"
    rm "$POSTGRES_DIR/pwfile"
    "${run_as[@]}" "$bin/pg_ctl" -D "$POSTGRES_DIR/data" -l "$POSTGRES_DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $POSTGRES_DIR" start >/dev/null
    PGPASSWORD=$password "$bin/createdb" -h 127.0.0.1 -p "$port" -U autotune autotune_test
    export AUTOTUNE_TEST_POSTGRES_URL="postgresql://autotune:$password@127.0.0.1:$port/autotune_test"
    # For the test that restarts the server under a search (tests/test_faults.py).
    export AUTOTUNE_TEST_POSTGRES_DATA="$POSTGRES_DIR/data" AUTOTUNE_TEST_POSTGRES_BIN="$bin"
    echo "$("$bin/postgres" --version) on 127.0.0.1:$port (data in $POSTGRES_DIR)"
}

postgres_stop() {
    [ -n "${POSTGRES_DIR:-}" ] || return 0
    "${POSTGRES_RUN_AS[@]}" "$POSTGRES_BIN/pg_ctl" -D "$POSTGRES_DIR/data" -m fast -w stop >/dev/null || true
    rm -rf "$POSTGRES_DIR"
    unset POSTGRES_DIR AUTOTUNE_TEST_POSTGRES_URL AUTOTUNE_TEST_POSTGRES_DATA AUTOTUNE_TEST_POSTGRES_BIN
}
