#!/usr/bin/env bash
# Makes a development PKI and access-token key for the two services, with the openssl CLI:
#   ca.pem, ca-key.pem                    a dev CA (EC P-256, 10 years), CN "ticketing dev CA"
#   wallet.pem, wallet-key.pem            wallet-svc's certificate (server and client),
#                                         URI SAN spiffe://ticketing.local/wallet-svc
#   reservation.pem, reservation-key.pem  reservation-svc's server certificate,
#                                         URI SAN spiffe://ticketing.local/reservation-svc
#   reservation-client.pem, -client-key.pem  reservation-svc's client certificate toward wallet-svc
#                                         (client use only, so that whatever terminates
#                                         reservation-svc's TLS cannot pay as it),
#                                         URI SAN spiffe://ticketing.local/reservation-svc
#   admin.pem, admin-key.pem              a client certificate for an operator's tools (grpcurl),
#                                         URI SAN spiffe://ticketing.local/admin
#   token-key.pem, jwks.json              the Ed25519 key that signs access tokens, and its JWKS
#   admission-keys.json                   the HMAC key (a JWKS of one "oct" key) with which
#                                         reservation-svc's replicas sign and check the waiting
#                                         rooms' admission tokens
#   wallet.env, reservation.env           the services' TLS and token settings (KEY=VALUE lines)
# Leaf certificates are valid 825 days, for DNS:localhost, IP:127.0.0.1 and the service's own
# name (DNS:wallet-svc, DNS:reservation-svc: its host in docker-compose and Kubernetes);
# private keys are PKCS#8 PEM with mode 600.
#
# Usage: scripts/dev-pki.sh [--force] DIR      (e.g. scripts/dev-pki.sh .tools/pki)
# DIR is created when missing. When DIR already holds every file and the three leaf certificates
# are valid for 30 more days, they are kept; otherwise (or with --force) everything is made anew.
# Then: set -a; . DIR/wallet.env; set +a   before starting wallet-svc (reservation.env likewise),
# and TOKEN=$(scripts/dev-token.sh DIR 42) for an access token.
set -euo pipefail

TRUST_DOMAIN=ticketing.local
AUTH_ISSUER=https://auth.ticketing.local
AUTH_AUDIENCE=ticketing
WALLET_ENDPOINT=https://localhost:50052
CA_DAYS=3650
LEAF_DAYS=825
RENEW_SECONDS=$((30 * 24 * 3600))
LEAVES=(wallet reservation reservation-client admin)
FILES=(ca.pem ca-key.pem wallet.pem wallet-key.pem reservation.pem reservation-key.pem
    reservation-client.pem reservation-client-key.pem admin.pem admin-key.pem token-key.pem
    jwks.json admission-keys.json wallet.env reservation.env)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'dev-pki.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { printf 'usage: %s [--force] DIR\n' "$0" >&2; exit 2; }

# openssl on PATH, installed from Debian packages when we are root and it is missing.
ensure_openssl() {
    command -v openssl >/dev/null && return
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        die "openssl not found on PATH: install OpenSSL 3 (e.g. apt-get install openssl) and run again"
    fi
    log "openssl not found: installing it (Debian package openssl)"
    apt-get update && apt-get install -y openssl
    command -v openssl >/dev/null || die "openssl is still not on PATH after installing it"
}

# The certificate's SPIFFE identity, from the service's short name.
spiffe_id() { printf 'spiffe://%s/%s' "$TRUST_DOMAIN" "$1"; }

# The env files hold bare KEY=VALUE lines that a shell sources: no room for quoting in DIR.
check_path() {
    [[ $DIR =~ ^[A-Za-z0-9._/@%+=:,-]+$ ]] ||
        die "the directory's path ($DIR) may hold only letters, digits and ._/@%+=:,- (it goes unquoted into the env files)"
}

# True when DIR holds every file, the leaves chain to its CA and are valid for 30 more days, and
# the env files point into DIR.
reusable() {
    local f leaf
    for f in "${FILES[@]}"; do [ -s "$DIR/$f" ] || return 1; done
    for leaf in "${LEAVES[@]}"; do
        openssl x509 -checkend "$RENEW_SECONDS" -noout -in "$DIR/$leaf.pem" >/dev/null 2>&1 || return 1
        openssl verify -CAfile "$DIR/ca.pem" "$DIR/$leaf.pem" >/dev/null 2>&1 || return 1
    done
    grep -qxF "TLS_CERT_FILE=$DIR/wallet.pem" "$DIR/wallet.env" &&
        grep -qxF "TLS_CERT_FILE=$DIR/reservation.pem" "$DIR/reservation.env"
}

# A new private key in file $2 (mode 600): "ec" for P-256, "ed25519" for Ed25519; PKCS#8 PEM.
new_key() {
    local kind=$1 out=$2
    case $kind in
        ec) (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
            -pkeyopt ec_param_enc:named_curve -out "$out") ;;
        ed25519) (umask 077 && openssl genpkey -algorithm ED25519 -out "$out") ;;
    esac
    chmod 600 "$out"
}

# The openssl config for the CA's request and self-signature, and for the leaves' requests.
write_config() {
    cat >"$WORK/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
}

# The extensions of a leaf certificate, to file $3. Arguments: EXTENDED_KEY_USAGE SUBJECT_ALT_NAME FILE
write_leaf_extensions() {
    cat >"$3" <<EOF
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $1
subjectAltName = $2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}

make_ca() {
    log "making the dev CA"
    new_key ec "$WORK/ca-key.pem"
    openssl req -x509 -new -config "$WORK/openssl.cnf" -extensions ca \
        -key "$WORK/ca-key.pem" -subj "/CN=ticketing dev CA" -days "$CA_DAYS" -sha256 \
        -set_serial "0x$(openssl rand -hex 16)" -out "$WORK/ca.pem"
}

# A leaf certificate NAME.pem and key NAME-key.pem, signed by the CA.
# Arguments: NAME CN EXTENDED_KEY_USAGE SUBJECT_ALT_NAME
make_leaf() {
    local name=$1 cn=$2 eku=$3 san=$4
    log "making $name.pem (CN $cn, $san)"
    new_key ec "$WORK/$name-key.pem"
    write_leaf_extensions "$eku" "$san" "$WORK/$name.ext"
    openssl req -new -config "$WORK/openssl.cnf" -key "$WORK/$name-key.pem" -subj "/CN=$cn" \
        -out "$WORK/$name.csr"
    # x509 -req reports on stderr even when it succeeds: shown only when it fails.
    openssl x509 -req -in "$WORK/$name.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$LEAF_DAYS" -sha256 \
        -extfile "$WORK/$name.ext" -out "$WORK/$name.pem" 2>"$WORK/x509.log" ||
        { cat "$WORK/x509.log" >&2; die "could not sign $name.pem"; }
}

make_leaves() {
    # wallet-svc's own certificate also serves as a client one: its health probe presents it
    # to wallet-svc, which asks every client for a certificate.
    make_leaf wallet wallet-svc "serverAuth, clientAuth" \
        "DNS:localhost, IP:127.0.0.1, DNS:wallet-svc, URI:$(spiffe_id wallet-svc)"
    make_leaf reservation reservation-svc serverAuth \
        "DNS:localhost, IP:127.0.0.1, DNS:reservation-svc, URI:$(spiffe_id reservation-svc)"
    make_leaf reservation-client reservation-svc clientAuth "URI:$(spiffe_id reservation-svc)"
    make_leaf admin admin clientAuth "URI:$(spiffe_id admin)"
}

# base64url without padding, of stdin.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# token-key.pem and jwks.json: kid is "dev-" and the first 16 hex digits of the SHA-256 of the
# raw 32-byte public key, x that key in base64url.
make_token_key() {
    log "making the token signing key"
    new_key ed25519 "$WORK/token-key.pem"
    openssl pkey -in "$WORK/token-key.pem" -pubout -outform DER | tail -c 32 >"$WORK/token-pub.raw"
    [ "$(wc -c <"$WORK/token-pub.raw")" -eq 32 ] || die "could not extract the raw Ed25519 public key"
    local kid x
    kid="dev-$(openssl dgst -sha256 -binary <"$WORK/token-pub.raw" | od -An -v -tx1 | tr -d ' \n' | cut -c1-16)"
    x=$(b64url <"$WORK/token-pub.raw")
    printf '{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"%s","x":"%s"}]}\n' \
        "$kid" "$x" >"$WORK/jwks.json"
}

# admission-keys.json: 32 random bytes as one symmetric key, its kid "dev-admission-" and 8 hex
# digits of its own.
make_admission_key() {
    log "making the admission token key"
    local kid k
    kid="dev-admission-$(openssl rand -hex 4)"
    k=$(openssl rand 32 | b64url)
    (umask 077 && printf '{"keys":[{"kty":"oct","alg":"HS256","use":"sig","kid":"%s","k":"%s"}]}\n' \
        "$kid" "$k" >"$WORK/admission-keys.json")
}

write_env_files() {
    cat >"$WORK/wallet.env" <<EOF
# wallet-svc's TLS and token settings (made by scripts/dev-pki.sh); load before starting it: set -a; . $DIR/wallet.env; set +a
TLS_CERT_FILE=$DIR/wallet.pem
TLS_KEY_FILE=$DIR/wallet-key.pem
TLS_CLIENT_CA_FILE=$DIR/ca.pem
AUTH_JWKS_FILE=$DIR/jwks.json
AUTH_ISSUER=$AUTH_ISSUER
AUTH_AUDIENCE=$AUTH_AUDIENCE
PAYMENT_SERVICE_IDENTITIES=$(spiffe_id reservation-svc)
EOF
    cat >"$WORK/reservation.env" <<EOF
# reservation-svc's TLS and token settings (made by scripts/dev-pki.sh); load before starting it: set -a; . $DIR/reservation.env; set +a
TLS_CERT_FILE=$DIR/reservation.pem
TLS_KEY_FILE=$DIR/reservation-key.pem
AUTH_JWKS_FILE=$DIR/jwks.json
AUTH_ISSUER=$AUTH_ISSUER
AUTH_AUDIENCE=$AUTH_AUDIENCE
WALLET_ENDPOINT=$WALLET_ENDPOINT
WALLET_TLS_CA_FILE=$DIR/ca.pem
WALLET_TLS_CERT_FILE=$DIR/reservation-client.pem
WALLET_TLS_KEY_FILE=$DIR/reservation-client-key.pem
ADMISSION_TOKEN_KEYS_FILE=$DIR/admission-keys.json
EOF
}

# Each leaf chains to the CA, for its purposes, and matches its private key.
verify_all() {
    local leaf out purposes purpose
    for leaf in "${LEAVES[@]}"; do
        out=$(openssl verify -CAfile "$WORK/ca.pem" "$WORK/$leaf.pem" 2>&1) ||
            die "$leaf.pem does not verify against ca.pem: $out"
        [ "$out" = "$WORK/$leaf.pem: OK" ] || die "$leaf.pem does not verify against ca.pem: $out"
        case $leaf in
            wallet) purposes="sslserver sslclient" ;;
            reservation) purposes=sslserver ;;
            *) purposes=sslclient ;;
        esac
        for purpose in $purposes; do
            out=$(openssl verify -x509_strict -purpose "$purpose" -CAfile "$WORK/ca.pem" "$WORK/$leaf.pem" 2>&1) ||
                die "$leaf.pem does not verify as $purpose: $out"
        done
        [ "$(openssl x509 -in "$WORK/$leaf.pem" -noout -pubkey)" = "$(openssl pkey -in "$WORK/$leaf-key.pem" -pubout)" ] ||
            die "$leaf.pem does not match $leaf-key.pem"
    done
}

# Moves the made files from the work directory into DIR.
install_files() {
    local f
    for f in "${FILES[@]}"; do mv -f "$WORK/$f" "$DIR/$f"; done
    chmod 644 "$DIR/ca.pem" "$DIR/wallet.pem" "$DIR/reservation.pem" \
        "$DIR/reservation-client.pem" "$DIR/admin.pem" \
        "$DIR/jwks.json" "$DIR/wallet.env" "$DIR/reservation.env"
}

summary() {
    cat <<EOF
Development PKI in $DIR
  CA:          $DIR/ca.pem (CN "ticketing dev CA")
  identities:  $(spiffe_id wallet-svc)       wallet.pem (server, client)
               $(spiffe_id reservation-svc)  reservation.pem (server), reservation-client.pem (toward wallet-svc)
               $(spiffe_id admin)            admin.pem (client, for grpcurl)
  tokens:      signed with token-key.pem, verified with jwks.json (issuer $AUTH_ISSUER, audience $AUTH_AUDIENCE)
  admission:   reservation-svc signs and checks admission tokens with admission-keys.json
Use:
  set -a; . $DIR/wallet.env; set +a          before starting wallet-svc
  set -a; . $DIR/reservation.env; set +a     before starting reservation-svc
  TOKEN=\$(scripts/dev-token.sh $DIR 42)     a user's access token (add a role: ... 1 admin)
  grpcurl -cacert $DIR/ca.pem -cert $DIR/admin.pem -key $DIR/admin-key.pem \\
      -H "authorization: Bearer \$TOKEN" localhost:50051 list
EOF
}

main() {
    local force=
    if [ "${1-}" = --force ]; then force=1; shift; fi
    if [ $# -ne 1 ] || [ -z "$1" ]; then usage; fi
    case $1 in -*) usage ;; esac
    DIR=$1
    [[ $DIR = /* ]] || DIR=$PWD/$DIR
    check_path
    ensure_openssl
    mkdir -p -- "$1"
    DIR=$(cd -- "$1" && pwd)
    check_path
    if [ -z "$force" ] && reusable; then
        echo "$DIR already holds a development PKI valid for 30 more days: kept (--force to make it anew)"
        return
    fi
    WORK=$(mktemp -d "$DIR/.dev-pki.XXXXXX")
    trap 'rm -rf -- "$WORK"' EXIT
    write_config
    make_ca
    make_leaves
    make_token_key
    make_admission_key
    write_env_files
    verify_all
    install_files
    summary
}

main "$@"
