// Wrapper module that builds CoreDNS (cluster DNS of the `make e2e` node) from the Go module
// proxy. See hack/e2e/build.sh.
module redis-fleet.local/coredns

go 1.26.0

require github.com/coredns/coredns v1.15.0
