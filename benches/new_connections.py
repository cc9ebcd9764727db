# Sends N small batch POSTs to 127.0.0.1:PORT, each on a new connection, C at a time, and prints
# the status lines counted. Measure the server's CPU around it (utime + stime from /proc) to
# get what one new connection costs it (docs/PERFORMANCE.md, "Refusals from the request head").
#   python3 benches/new_connections.py PORT N C
import asyncio, sys
port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = b'{"requests":[' + b",".join(
    b'{"id":"%d","method":"GET","url":"/v2/x"}' % i for i in range(10)) + b"]}"
request = (b"POST /v2/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
seen = {}

async def one(gate):
    async with gate:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            line = await reader.readline()
            status = line.split(b" ")[1].decode() if line else "closed"
            writer.close()
        except OSError as e:
            status = type(e).__name__
        seen[status] = seen.get(status, 0) + 1

async def main():
    gate = asyncio.Semaphore(c)
    await asyncio.gather(*(one(gate) for _ in range(n)))
    print(seen)

asyncio.run(main())
