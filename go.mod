module boardnbd

go 1.26.8

require (
	github.com/hashicorp/mdns v1.0.7 // indirect
	github.com/miekg/dns v1.1.72 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/mod v0.31.0 // indirect
	golang.org/x/net v0.48.0 // indirect
	golang.org/x/sync v0.19.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/tools v0.40.0 // indirect
)
