module distroless-guard.test/bins/testapp

go 1.26.0
