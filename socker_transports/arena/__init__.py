"""The arena: socker's demo game (rooms, WebRTC data channels and resume you can watch).

One concept per file: `game` (the pure simulation), `protocol` (message bytes),
`server` (the socker flow and the match), `bots` (bot players), `cut` (a relay
that cuts a websocket), `view` (the terminal live view and checks), `run`
(``socker demo``: the processes). The page is ``static/arena.html`` + ``arena.js``.
"""
