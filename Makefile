# The test command is `go test ./...` (README); `make e2e` adds the real end-to-end suite.
.PHONY: build test e2e bench demo clean

VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	CGO_ENABLED=0 go build -ldflags "-X main.version=$(VERSION)" -o vmup .

test:
	go test ./...

e2e:
	scripts/e2e.sh

# vmup against the same operations run by hand (scripts/bench.sh): figures,
# never a failure on one, so it is not part of .ci/run.
bench:
	scripts/bench.sh

# Brings up a VM "demo" from the small test image with examples/site.yml, detached.
demo: build
	scripts/demo.sh

clean:
	rm -f vmup
