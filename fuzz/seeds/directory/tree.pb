*
data ùşôº‰`E"r†ğ3ºMyã¨&²wdİ×=L>Y~#
linkdata