# Multi-stage: a static binary on distroless, non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/relay ./cmd/relay

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/relay /usr/local/bin/relay
WORKDIR /var/lib/hookrelay
VOLUME ["/var/lib/hookrelay"]
# 443 and 80 with tls.mode acme (80 answers HTTP-01 and redirects); 8080 plain behind a balancer;
# 9090 the admin API, which listens on loopback unless admin.listen and a token say otherwise.
EXPOSE 443 80 8080 9090
# The admin API listens on loopback inside the container, where the check runs; its address and
# token (admin.token_env or admin.token_file) come from the config CMD serves.
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/relay", "health", "-config", "/etc/hookrelay/config.yaml"]
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/relay"]
CMD ["serve", "-config", "/etc/hookrelay/config.yaml"]
